// Raster images and SVG in an <img> from a blob URL: an SVG is never inlined into our page, so its
// scripts do not run and its styles do not leak.
import { blobUrl, element } from "./bytes.js";

export function imageView(bytes, mime, path) {
  const image = element("img", "image");
  image.src = blobUrl(image, bytes, mime);
  image.alt = `Output image ${path}`;
  return image;
}
