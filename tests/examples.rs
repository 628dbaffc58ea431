//! The container files cannot be run here (no Docker engine), so their parts are checked
//! against the project: what they copy and mount exists, and the settings they pass are real
//! flags' environment twins. The same binary and envoy.yaml run natively in `envoy_e2e.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn exists(path: &Path) -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path).exists()
}

/// Every `RATELIMITD_…` word in `text`.
fn settings(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("RATELIMITD_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dockerfile_copies_what_exists_and_sets_real_settings() {
    let dockerfile = read("Dockerfile");
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(
                exists(Path::new(source)),
                "Dockerfile copies {source}, which is missing"
            );
        }
    }
    let cli = read("src/cli.rs");
    for setting in settings(&dockerfile) {
        assert!(
            cli.contains(&format!("\"{setting}\"")),
            "{setting} is not a flag's twin"
        );
    }
    assert!(
        dockerfile.contains("USER 10001"),
        "the image runs as a non-root user"
    );
    assert!(
        dockerfile.contains(r#"CMD ["ratelimitd", "health""#),
        "HEALTHCHECK uses ratelimitd health"
    );
    // The image ships the binary built for speed: the `dist` profile, which Cargo.toml defines
    // with link-time optimisation and one codegen unit.
    assert!(dockerfile.contains("cargo build --profile dist --locked --bin ratelimitd"));
    assert!(dockerfile.contains("COPY --from=build /src/target/dist/ratelimitd "));
    let manifest = read("Cargo.toml");
    let dist = manifest
        .split("[profile.dist]")
        .nth(1)
        .expect("Cargo.toml defines [profile.dist]");
    let dist = dist.split("\n[").next().unwrap_or_default();
    for setting in [
        "inherits = \"release\"",
        "lto = \"fat\"",
        "codegen-units = 1",
    ] {
        assert!(dist.contains(setting), "[profile.dist] lacks {setting}");
    }
}

#[test]
fn the_compose_file_mounts_what_exists_and_sets_real_settings() {
    let compose = read("examples/compose/docker-compose.yml");
    let base = Path::new("examples/compose");
    let mut mounts = 0;
    for line in compose.lines().map(str::trim) {
        if let Some(volume) = line.strip_prefix("- ../") {
            let host = volume.split(':').next().unwrap_or_default();
            assert!(
                exists(&base.join(format!("../{host}"))),
                "compose mounts ../{host}, which is missing"
            );
            mounts += 1;
        }
    }
    assert_eq!(
        mounts, 3,
        "envoy.yaml, the rules and the upstream are mounted"
    );
    let cli = read("src/cli.rs");
    for setting in settings(&compose) {
        assert!(
            cli.contains(&format!("\"{setting}\"")),
            "{setting} is not a flag's twin"
        );
    }
}
