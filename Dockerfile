# A development image for bun-umap: Node and npm (Bun comes from the `bun` npm package), the
# kernel headers the fault engine is compiled against, and gcc for `npm run lint:c`.
#
#   docker build -t bun-umap-dev .
#   docker run --rm -it --security-opt seccomp=userfaultfd.json --cap-add SYS_PTRACE bun-umap-dev
#
# userfaultfd needs both: the seccomp profile lets the system call through, and CAP_SYS_PTRACE
# (or `sysctl vm.unprivileged_userfaultfd=1` on the host, or `--device /dev/userfaultfd`) lets a
# process use it for kernel-mode faults. See the README's "Containers".
FROM node:20-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends linux-libc-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /bun-umap
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
ENV PATH=/bun-umap/node_modules/.bin:$PATH

CMD ["npm", "test"]
