/** The chat UI: static files built by Vite from src/api/ui into dist/ui, served at `/`. */
import { existsSync } from "node:fs";
import path from "node:path";
import fastifyStatic from "@fastify/static";
import type { FastifyPluginAsync } from "fastify";

export interface UiRoutesOptions {
  /** Folder holding the built UI (index.html + assets). */
  root: string;
}

const uiRoutes: FastifyPluginAsync<UiRoutesOptions> = async (app, { root }) => {
  if (!existsSync(path.join(root, "index.html"))) {
    app.get("/", { schema: { hide: true } }, async (_request, reply) =>
      reply
        .code(503)
        .type("text/plain; charset=utf-8")
        .send(
          `The chat UI is not built (no ${root}/index.html); run \`npm run build:ui\`. The API works without it.\n`,
        ),
    );
    return;
  }
  await app.register(fastifyStatic, {
    root,
    prefix: "/",
    index: ["index.html"],
    wildcard: false,
    schemaHide: true,
  });
};

export default uiRoutes;
