// The three.js part of the 3D viewer, a chunk of its own: the model lit by a light that follows
// the camera, orbit controls (drag to rotate, right-drag or Shift-drag to pan, wheel to zoom, arrow
// keys to pan), fitted to the view. It renders only when something changed, so an idle model costs
// nothing. WebGL is required; Chromium without a GPU provides it in software (SwiftShader).
import {
  Box3, DirectionalLight, DoubleSide, Group, HemisphereLight, Mesh,
  MeshStandardMaterial, PerspectiveCamera, Points, PointsMaterial, Scene, Sphere, Vector3, WebGLRenderer,
} from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { ThreeMFLoader } from "three/examples/jsm/loaders/3MFLoader.js";
import { AMFLoader } from "three/examples/jsm/loaders/AMFLoader.js";
import { GLTFLoader } from "three/examples/jsm/loaders/GLTFLoader.js";
import { OBJLoader } from "three/examples/jsm/loaders/OBJLoader.js";
import { PLYLoader } from "three/examples/jsm/loaders/PLYLoader.js";
import { STLLoader } from "three/examples/jsm/loaders/STLLoader.js";
import { element, onRelease } from "./bytes.js";

const MODEL_COLOUR = 0xf2b84b; // OpenSCAD's yellow, readable on light and dark backgrounds
const Z_UP = new Set(["stl", "3mf", "amf"]); // CAD formats; glTF, OBJ and PLY are Y-up

function material(geometry) {
  const colours = Boolean(geometry.attributes.color);
  return new MeshStandardMaterial({
    color: colours ? 0xffffff : MODEL_COLOUR, vertexColors: colours, metalness: 0.05, roughness: 0.75, side: DoubleSide,
  });
}

function mesh(geometry) {
  if (!geometry.attributes.normal) geometry.computeVertexNormals();
  return new Mesh(geometry, material(geometry));
}

/** A PLY without faces: a point cloud. */
function points(geometry) {
  const colours = Boolean(geometry.attributes.color);
  return new Points(geometry, new PointsMaterial({ size: 2, sizeAttenuation: false, vertexColors: colours, color: colours ? 0xffffff : MODEL_COLOUR }));
}

/** The model as a three.js object. */
async function load(bytes, format) {
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  switch (format) {
    case "stl": return mesh(new STLLoader().parse(buffer));
    case "ply": {
      const geometry = new PLYLoader().parse(buffer);
      return geometry.index ? mesh(geometry) : points(geometry);
    }
    case "obj": {
      // Its .mtl files are not loaded: every part gets our material instead of the loader's white.
      const group = new OBJLoader().parse(new TextDecoder().decode(bytes));
      group.traverse((node) => {
        if (!node.isMesh) return;
        if (!node.geometry.attributes.normal) node.geometry.computeVertexNormals();
        node.material = material(node.geometry);
      });
      return group;
    }
    case "3mf": return new ThreeMFLoader().parse(buffer);
    case "amf": return new AMFLoader().parse(buffer);
    case "gltf": {
      const loader = new GLTFLoader();
      // Only the file itself: a .gltf's external buffers or textures are not fetched from our site.
      loader.manager.setURLModifier((url) => (/^(data|blob):/.test(url) ? url : "data:,"));
      return (await loader.parseAsync(buffer, "")).scene;
    }
    default: throw new Error(`no loader for ${format}`);
  }
}

function countTriangles(object) {
  let triangles = 0;
  object.traverse((node) => {
    const geometry = node.isMesh ? node.geometry : null;
    if (geometry) triangles += (geometry.index ? geometry.index.count : geometry.attributes.position.count) / 3;
  });
  return Math.round(triangles);
}

function plural(count, noun) {
  return `${count.toLocaleString("en")} ${noun}${count === 1 ? "" : "s"}`;
}

/** Show the model in `box` (throws when WebGL is missing or the file does not parse). */
export async function showModel(box, bytes, format, path) {
  const model = await load(bytes, format);
  if (!box.isConnected) return; // replaced by a newer result while three.js loaded: no context to leak
  const scene = new Scene();
  const camera = new PerspectiveCamera(40, 1, 0.01, 1000);
  if (Z_UP.has(format)) camera.up.set(0, 0, 1);
  const pivot = new Group();
  pivot.add(model);
  scene.add(pivot, new HemisphereLight(0xffffff, 0x445566, 1.6));
  const light = new DirectionalLight(0xffffff, 2.2);
  light.position.set(0.5, 1, 2);
  camera.add(light);
  scene.add(camera);

  const renderer = new WebGLRenderer({ antialias: true, alpha: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  const canvas = renderer.domElement;
  canvas.tabIndex = 0;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `3D view of ${path}: drag to rotate, wheel to zoom, arrow keys to pan`);
  const controls = new OrbitControls(camera, canvas);
  controls.listenToKeyEvents(canvas);

  // Fit: centre the model on the origin, put the camera at a distance where its bounding sphere fills the view.
  const bounds = new Box3().setFromObject(model);
  const sphere = bounds.getBoundingSphere(new Sphere());
  const radius = sphere.radius || 1;
  pivot.position.copy(sphere.center).negate();
  const fit = () => {
    const distance = radius / Math.sin((camera.fov * Math.PI) / 360) * 1.1;
    const direction = Z_UP.has(format) ? new Vector3(1, -1.4, 0.9) : new Vector3(1, 0.8, 1.4);
    camera.position.copy(direction.normalize().multiplyScalar(distance));
    camera.near = distance / 100;
    camera.far = distance * 100;
    camera.updateProjectionMatrix();
    controls.target.set(0, 0, 0);
    controls.update();
  };

  const render = () => renderer.render(scene, camera);
  controls.addEventListener("change", render);
  const resize = () => {
    const width = box.clientWidth || 400;
    const height = Math.round(Math.min(width * 0.7, window.innerHeight * 0.6));
    renderer.setSize(width, height);
    camera.aspect = width / height;
    camera.updateProjectionMatrix();
    render();
  };
  const resized = new ResizeObserver(resize);

  const size = bounds.getSize(new Vector3());
  const facts = element("p", "note model-facts",
    `${plural(countTriangles(model), "triangle")} · ${[size.x, size.y, size.z].map((v) => +v.toFixed(2)).join(" × ")} · drag to rotate, wheel to zoom, right-drag to pan`);
  const reset = element("button", "", "Fit to view");
  reset.type = "button";
  reset.addEventListener("click", () => {
    fit();
    render();
  });
  facts.append(" ", reset);
  box.append(canvas, facts);
  fit();
  resized.observe(box);
  resize();
  box.dataset.rendered = "true";

  onRelease(box, () => {
    resized.disconnect();
    controls.dispose();
    model.traverse((node) => {
      node.geometry?.dispose();
      for (const material of [node.material ?? []].flat()) material.dispose();
    });
    renderer.dispose();
    renderer.forceContextLoss(); // browsers allow few live WebGL contexts: give this one back now
  });
}
