# The two commands a new user needs; see README.md.
.PHONY: demo test crds fmt lint chart

# A paying customer's tenant end to end on a local control plane, Postgres and moto. Ctrl-C stops it.
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

# Lint and render the Helm chart with real Helm (helm-python-sdk from tests/harness/install.sh).
chart:
	tests/harness/install.sh
	$${STACKPLANE_CACHE:-$$HOME/.cache/stackplane}/helm-venv/bin/python tests/harness/helm.py lint charts/stackplane -f charts/stackplane/ci/test-values.yaml
	$${STACKPLANE_CACHE:-$$HOME/.cache/stackplane}/helm-venv/bin/python tests/harness/helm.py render charts/stackplane -f charts/stackplane/ci/test-values.yaml >/dev/null
