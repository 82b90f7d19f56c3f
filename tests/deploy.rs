//! The deployments beyond one machine, checked with no cluster: the Kubernetes manifests of
//! `deploy/kubernetes/` validate strictly against the Kubernetes API schemas (the PyPI package
//! kubernetes-validate, installed by `make tools`), and `tests/python/deploy_shape.py` checks what
//! a schema cannot (replica counts, probes, the PodDisruptionBudget, Secret volumes, non-root,
//! `--replicas 2`, and the Swarm stack's dnsrr, global headnode and host-mode port).
//! `make test-swarm` runs the Swarm stack itself.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes versions the manifests are checked against: an older one the manifests are
/// meant to work on (native gRPC probes are GA since 1.27, and the StatefulSet's PVC retention
/// policy is on by default since 1.27) and the newest kubernetes-validate ships.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A program of the test tools' virtualenv (`make tools`).
fn tool(name: &str) -> PathBuf {
    let path = root().join(".tools/venv/bin").join(name);
    assert!(
        path.exists(),
        "{} not found: run `make tools` (make test does), which installs it from PyPI",
        path.display()
    );
    path
}

/// The manifests kustomization.yaml lists, in its order.
fn manifests() -> Vec<PathBuf> {
    let dir = root().join("deploy/kubernetes");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let mut in_resources = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("resources:") {
            in_resources = true;
        } else if in_resources {
            match line.trim_start().strip_prefix("- ") {
                Some(file) if line.starts_with("  ") => out.push(dir.join(file.trim())),
                _ => in_resources = false,
            }
        }
    }
    assert!(!out.is_empty(), "kustomization.yaml lists no resources");
    out
}

fn validate(version: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every manifest passes kubernetes-validate --strict (unknown fields are errors) for each
/// version, one "passed" line per resource.
#[test]
fn kubernetes_manifests_validate_strictly() {
    let files = manifests();
    for version in KUBERNETES_VERSIONS {
        let (ok, text) = validate(version, &files);
        println!("{text}");
        assert!(ok, "kubernetes-validate {version} failed:\n{text}");
        let short = version.trim_end_matches(".0");
        for file in &files {
            let name = file.file_name().unwrap().to_string_lossy();
            assert!(
                text.lines().any(|l| l.contains(&*name)
                    && l.contains(" passed for resource ")
                    && l.ends_with(&format!("against version {short}"))),
                "no 'passed' line for {name} at {version}:\n{text}"
            );
        }
    }
}

/// The validator is strict: a misspelt field is refused, so a pass above means something.
#[test]
fn kubernetes_validate_refuses_an_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(root().join("deploy/kubernetes/headnode-deployment.yaml")).unwrap();
    let misspelt = original.replacen("  replicas: 2", "  replica: 2", 1);
    assert_ne!(misspelt, original);
    let file = dir.path().join("headnode-deployment.yaml");
    std::fs::write(&file, misspelt).unwrap();
    let (ok, text) = validate(KUBERNETES_VERSIONS[0], &[file]);
    assert!(!ok, "a Deployment with `replica:` passed:\n{text}");
    assert!(text.contains("replica"), "{text}");
}

/// The shape of the Kubernetes manifests and of compose/stack.yml (tests/python/deploy_shape.py).
#[test]
fn deployments_have_the_shape_the_spec_asks_for() {
    let out = Command::new(tool("python"))
        .arg(root().join("tests/python/deploy_shape.py"))
        .arg(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "deploy_shape.py failed:\n{text}");
    assert!(!text.contains("FAIL"), "{text}");
}
