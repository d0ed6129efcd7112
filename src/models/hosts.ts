import { DEFAULT_BASE_URLS, type CatalogFile, type HostId } from "./catalog.js";

/**
 * Where each publishing host is reached and with which credentials. Built from (lowest first) the
 * defaults, the environment and explicit options, so a private mirror works without code changes:
 *
 * - `REGION_VQA_BASE_URL_HF`, `REGION_VQA_BASE_URL_OPENXLAB`, `REGION_VQA_BASE_URL_OPENAI`: replace a
 *   host's base URL;
 *   `HF_ENDPOINT` (the variable huggingface_hub reads, e.g. for hf-mirror.com) is honoured too.
 * - `REGION_VQA_MIRROR_<HOST>`: replace the base URL of a host named by its default host name, upper
 *   case, dots and dashes as underscores (`REGION_VQA_MIRROR_HUGGINGFACE_CO=https://mirror.local/hf`,
 *   `REGION_VQA_MIRROR_OPENAIPUBLIC_AZUREEDGE_NET` for OpenAI's CLIP files).
 * - `REGION_VQA_HF_TOKEN` or `HF_TOKEN`: sent as `Authorization: Bearer ...` to the Hugging Face base
 *   host only (never to the CDN it redirects to, nor to other hosts).
 */
export interface HostConfig {
  baseUrls: Record<HostId, string>;
  /** Extra request headers per host id (e.g. authorization), sent only to that host's origin. */
  headers: Partial<Record<HostId, Record<string, string>>>;
}

const ENV_BASE_URL: Record<HostId, string> = {
  huggingface: "REGION_VQA_BASE_URL_HF",
  openxlab: "REGION_VQA_BASE_URL_OPENXLAB",
  openai: "REGION_VQA_BASE_URL_OPENAI",
};

export function mirrorEnvName(baseUrl: string): string {
  const host = new URL(baseUrl).hostname;
  return `REGION_VQA_MIRROR_${host.toUpperCase().replace(/[.-]/g, "_")}`;
}

export function hostConfigFromEnv(
  env: NodeJS.ProcessEnv = process.env,
  overrides: { baseUrls?: Partial<Record<HostId, string>>; hfToken?: string } = {},
): HostConfig {
  const baseUrls = { ...DEFAULT_BASE_URLS };
  for (const id of Object.keys(baseUrls) as HostId[]) {
    const fromMirror = env[mirrorEnvName(DEFAULT_BASE_URLS[id])];
    const fromHfEndpoint = id === "huggingface" ? env.HF_ENDPOINT : undefined;
    const chosen = overrides.baseUrls?.[id] ?? env[ENV_BASE_URL[id]] ?? fromMirror ?? fromHfEndpoint;
    if (chosen) baseUrls[id] = chosen;
  }
  const headers: HostConfig["headers"] = {};
  const token = overrides.hfToken ?? env.REGION_VQA_HF_TOKEN ?? env.HF_TOKEN;
  if (token) headers.huggingface = { authorization: `Bearer ${token}` };
  return { baseUrls, headers };
}

export function fileUrl(config: HostConfig, file: CatalogFile): string {
  return `${config.baseUrls[file.host].replace(/\/+$/, "")}/${file.path.replace(/^\/+/, "")}`;
}
