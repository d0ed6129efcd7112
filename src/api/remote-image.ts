/**
 * Remote `image_url`s: fetched only when they start with an allow-listed prefix, with size and time
 * limits and no redirects (a redirect could leave the allow-list).
 */
import { RegionVqaError } from "../common/errors.js";
import type { RemoteImageConfig } from "../config.js";

/**
 * Bytes of an allow-listed remote image, with size and time limits and no redirects. `signal` is the
 * request's own (client gone, deadline, shutdown): the fetch stops with it too.
 */
export async function fetchRemoteImage(
  url: string,
  remote: RemoteImageConfig,
  signal: AbortSignal,
): Promise<Uint8Array> {
  if (!remote.allow.some((prefix) => url.startsWith(prefix))) {
    throw new RegionVqaError(
      "remote_fetch_forbidden",
      "This server does not fetch remote image URLs" +
        (remote.allow.length > 0 ? " outside its allow-list" : "") +
        "; send the image as a data URL (data:image/png;base64,...).",
    );
  }
  let response: Response;
  try {
    // Redirects are refused: they could lead outside the allow-list.
    response = await fetch(url, {
      redirect: "error",
      signal: AbortSignal.any([signal, AbortSignal.timeout(remote.timeoutMs)]),
    });
  } catch (err) {
    signal.throwIfAborted();
    const e = err as Error;
    if (e.name === "TimeoutError")
      throw new RegionVqaError("timeout", `Fetching the image took longer than ${remote.timeoutMs} ms.`);
    throw new RegionVqaError("image_undecodable", `The image URL could not be fetched: ${e.message}`);
  }
  if (!response.ok || !response.body) {
    throw new RegionVqaError("image_undecodable", `The image URL answered HTTP ${response.status}.`);
  }
  const declared = Number(response.headers.get("content-length") ?? "0");
  const tooLarge = () =>
    new RegionVqaError("image_too_large", `The image at the URL is larger than ${remote.maxBytes} bytes.`, {
      maxBytes: remote.maxBytes,
    });
  if (declared > remote.maxBytes) {
    await response.body.cancel().catch(() => undefined);
    throw tooLarge();
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > remote.maxBytes) {
        await reader.cancel().catch(() => undefined);
        throw tooLarge();
      }
      chunks.push(value);
    }
  } catch (err) {
    if (err instanceof RegionVqaError) throw err;
    signal.throwIfAborted();
    const e = err as Error;
    if (e.name === "TimeoutError")
      throw new RegionVqaError("timeout", `Fetching the image took longer than ${remote.timeoutMs} ms.`);
    throw new RegionVqaError("image_undecodable", `Reading the image URL failed: ${e.message}`);
  }
  return Buffer.concat(chunks);
}
