# The two commands a new user needs; see README.md.
.PHONY: demo test crds fmt lint

# Start a local control plane, install the CRDs and example Platforms, show them. Ctrl-C stops it.
demo:
	tests/demo.sh

# Start the real components (kube-apiserver, Postgres, moto) and run every test against them.
test:
	tests/run.sh

# Regenerate crds/*.yaml from the Rust types.
crds:
	cargo run -q -p stackplane-crds --bin crdgen

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
