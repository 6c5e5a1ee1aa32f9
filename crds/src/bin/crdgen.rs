//! Writes one YAML file per CRD into the directory given as argument (default: `crds/`).
//! `--check` writes nothing and fails when a committed file differs from the types.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR")));
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            other => dir = PathBuf::from(other),
        }
    }
    let mut stale = Vec::new();
    for crd in stackplane_crds::all_crds() {
        let path = dir.join(stackplane_crds::crd_file_name(&crd));
        let yaml = match stackplane_crds::crd_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot serialise {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                stale.push(path);
            }
        } else if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in stale {
            eprintln!("crdgen: {} differs from the types; run `cargo run -p stackplane-crds --bin crdgen`", p.display());
        }
        ExitCode::FAILURE
    }
}
