# Serin's container image: one statically linked `serin` on an empty base, no shell,
# running as uid/gid 65532 (distroless' "nonroot", without needing an /etc/passwd).
#
# Two ways to build it:
#   make image
#       builds the static binary on this machine and runs
#       `buildah build --target prebuilt` on a staged context: no registry is
#       contacted (the only base is `scratch`).
#   docker build -t serin .      (or buildah/podman, with registry access)
#       the default target compiles inside rust:<version> and copies the result onto
#       the same empty base.

ARG RUST_VERSION=1.95

# ---- builder (only for the default target; needs registry access) ----
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# glibc's crt-static: ring and rustls link statically, and glibc >= 2.34 resolves
# names (files, dns) without loading NSS modules, which a scratch image lacks.
RUN RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --release --locked -p serin --target x86_64-unknown-linux-gnu \
 && mkdir -p /out/etc/ssl/certs \
 && cp target/x86_64-unknown-linux-gnu/release/serin /out/serin \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/

# ---- prebuilt: what `make image` builds from a context staged by scripts/image.sh ----
FROM scratch AS prebuilt
COPY serin /serin
# Webhooks and alert providers are usually HTTPS endpoints on the internet.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 9091
ENTRYPOINT ["/serin"]
CMD ["run"]

# ---- default: build everything in containers ----
FROM scratch AS release
COPY --from=builder /out/ /
USER 65532:65532
EXPOSE 9091
ENTRYPOINT ["/serin"]
CMD ["run"]
