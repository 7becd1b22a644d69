# Production image: Node 24 LTS, compiled JavaScript, production dependencies only, non-root.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY adapters ./adapters
COPY scripts ./scripts
COPY test/support ./test/support
RUN npm run build

FROM node:24-bookworm-slim
ENV NODE_ENV=production
# A small young generation and a bounded heap keep RSS near 250 MB under load (see
# docs/benchmarks.md); raise --max-old-space-size for larger containers. Same default as npm start.
ENV NODE_OPTIONS="--max-semi-space-size=4 --max-old-space-size=192"
# glibc otherwise keeps each freed argon2 buffer (19 MiB) in the arena of the thread that hashed
# (its mmap threshold rises after the first one): a fixed threshold gives that memory back.
ENV MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=2
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY views ./views
USER node
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["node", "dist/src/server.js"]
