// 3D models (STL, OBJ, PLY, glTF/GLB, 3MF, AMF). three.js and its loaders are a separate chunk
// (model3d.js), loaded the first time a model is shown; until then a note says so.
import { element } from "./bytes.js";

/** The loader for a model file, by media type then extension; null when there is none. */
export function modelFormat(mime, ext) {
  const byMime = {
    "model/stl": "stl", "model/x.stl-ascii": "stl", "model/x.stl-binary": "stl", "model/obj": "obj",
    "model/ply": "ply", "model/gltf-binary": "gltf", "model/gltf+json": "gltf", "model/3mf": "3mf",
    "application/x-amf": "amf",
  };
  const byExtension = { ".stl": "stl", ".obj": "obj", ".ply": "ply", ".glb": "gltf", ".gltf": "gltf", ".3mf": "3mf", ".amf": "amf" };
  return byMime[mime] ?? byExtension[ext] ?? null;
}

/**
 * A box that shows the model once three.js has loaded; `fallback()` (a text or hex view) replaces
 * it when the model cannot be shown (no WebGL, a file the loader refuses).
 */
export function modelView(bytes, format, path, fallback) {
  const box = element("div", "model");
  const note = element("p", "note", "Loading the 3D viewer…");
  box.append(note);
  import("./model3d.js")
    .then(({ showModel }) => showModel(box, bytes, format, path))
    .then(() => note.remove())
    .catch((error) => {
      note.textContent = `The 3D view is not available (${error.message}); the file is shown below.`;
      box.dataset.failed = "true";
      box.append(fallback());
    });
  return box;
}
