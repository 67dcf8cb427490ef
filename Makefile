.PHONY: demo test crds image

# Local end-to-end demo on the local cluster (needs root; first run builds Kubernetes).
demo:
	e2e/demo.sh

# Every test: unit, end-to-end on the local cluster, fmt and clippy. CI runs this.
test:
	e2e/test.sh

# Regenerate crds/ and the field reference (docs/reference.md) from the Rust types.
crds:
	cargo run -q -- crds > crds/serin.yaml
	cargo run -q -- reference > docs/reference.md

# Container image serin:<version> and an OCI archive, with buildah (no Docker daemon).
image:
	scripts/image.sh
