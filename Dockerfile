# syntax=docker/dockerfile:1
# workspace-jobs: one image for every command (migrate, worker, provisioner, dashboard, enqueue, watch).
#   docker build -t workspace-jobs .
#   docker run --rm workspace-jobs --help

# --- build: install everything, compile TypeScript, then drop the dev dependencies -------------------
FROM node:20-bookworm-slim AS build
WORKDIR /app
ENV CI=true NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false

# Dependencies first, so that a source change does not reinstall them. `--ignore-scripts` because the
# package's `prepare` script compiles sources that are not copied yet; `npm rebuild` below runs the
# dependencies' own install scripts once the sources are there.
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --ignore-scripts

COPY tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY src ./src
COPY migrations ./migrations
RUN npm rebuild \
 && npm run build \
 && npm prune --omit=dev --ignore-scripts

# --- runtime: compiled code and production dependencies only, as the unprivileged `node` user ---------
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin
COPY --from=build /app/migrations ./migrations
# The live chat page's static files; the compiled dashboard serves them from the package's src/.
COPY --from=build /app/src/dashboard/public ./src/dashboard/public
USER node
# Dashboard (3000) and the worker's METRICS_PORT (9464 in docker-compose.yml).
EXPOSE 3000 9464
ENTRYPOINT ["node", "bin/workspace-jobs.js"]
CMD ["--help"]
