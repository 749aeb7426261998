//! The deployment material: the Helm chart lints clean with Helm's own library,
//! every rendered manifest validates strictly against the Kubernetes schemas,
//! and deploy/k8s/ holds the current rendering (deploy/helm/check.py).

use std::path::Path;

#[test]
fn the_chart_lints_renders_validates_and_the_plain_manifests_are_current() {
    let python = std::env::var("PGNM_PYTHON")
        .expect("PGNM_PYTHON names a Python with deploy/helm/requirements.txt installed (`make test` sets it)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let out = std::process::Command::new(python)
        .arg(root.join("deploy/helm/check.py"))
        .output()
        .expect("run deploy/helm/check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chart check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("chart ok"), "{stdout}");
}

#[test]
fn the_dockerfile_builds_every_binary_into_a_non_root_image() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let dockerfile = std::fs::read_to_string(root.join("deploy/docker/Dockerfile")).expect("the Dockerfile");
    for binary in ["pgnm", "pgnm-router", "pgnm-checker", "pgnm-scheduler", "pgnm-jrpc-proxy", "pgnm-sim"] {
        assert!(dockerfile.contains(&format!("target/release/{binary} ")), "{binary} is copied into the image");
    }
    let last_from = dockerfile.lines().rfind(|l| l.starts_with("FROM ")).expect("a FROM");
    assert!(last_from.contains("distroless") && last_from.contains("nonroot"), "{last_from}");
    assert!(dockerfile.lines().any(|l| l.trim() == "USER 65532:65532"));
}
