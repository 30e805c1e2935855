//! docker-compose.yml (with the lab's docker-compose.lab.yml merged in, as
//! deploy/lab.env has compose do) checked against the code as text; scripts/compose-test.sh
//! runs it for real where an engine answers. It parses; every build target is a
//! Dockerfile stage; every mounted file exists;
//! every service config (production and lab) has the sections and keys its service
//! reads, its secret files are mounted secrets, its metrics port is the healthcheck's
//! and Prometheus' port; healthchecks run binaries the image contains (and that the
//! workspace builds); Prometheus targets are compose services; the Grafana
//! provisioning is mounted and consistent; alert rules and config pass promtool; and
//! every gwb metric the dashboard, the alerts and the README name is in the catalog.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(path: &str) -> Yaml {
    let mut value: Yaml = serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} parses: {e}"));
    // `<<: *gwb-service` merge keys, as compose resolves them.
    value.apply_merge().expect("merge keys resolve");
    value
}

/// docker-compose.yml with docker-compose.lab.yml over it, merged as compose merges
/// several files: mappings key by key, lists (volumes, ports) appended.
fn compose() -> Yaml {
    fn merge(base: &mut Yaml, over: &Yaml) {
        match (base, over) {
            (Yaml::Mapping(base), Yaml::Mapping(over)) => {
                for (key, value) in over {
                    match base.get_mut(key) {
                        Some(existing) => merge(existing, value),
                        None => {
                            base.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
            (Yaml::Sequence(base), Yaml::Sequence(over)) => base.extend(over.iter().cloned()),
            (base, over) => *base = over.clone(),
        }
    }
    let mut value = parse("docker-compose.yml");
    merge(&mut value, &parse("docker-compose.lab.yml"));
    value
}

fn services(compose: &Yaml) -> BTreeMap<String, Yaml> {
    compose["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .collect()
}

fn strings(value: &Yaml) -> Vec<String> {
    value.as_sequence().map(|s| s.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// `${NAME:-default}` → every value the compose file can take for it: the default and
/// the documented alternatives (the lab config directory). Other variables (host
/// ports, the image tag) expand to their default.
fn expansions(text: &str) -> Vec<String> {
    let mut text = text.to_string();
    while let Some(start) = text.find("${GWB_").filter(|_| !text.contains("${GWB_CONFIG_DIR:-")) {
        let end = start + text[start..].find('}').unwrap();
        let default = text[start..end].split_once(":-").map(|(_, d)| d.to_string()).unwrap_or_default();
        text.replace_range(start..=end, &default);
    }
    let text = text.as_str();
    match (text.find("${GWB_CONFIG_DIR:-"), text.find('}')) {
        (Some(start), Some(end)) => {
            let default = &text[start + "${GWB_CONFIG_DIR:-".len()..end];
            let rest = &text[end + 1..];
            vec![format!("{}{default}{rest}", &text[..start]), format!("{}./deploy/config/lab{rest}", &text[..start])]
        }
        _ => {
            assert!(!text.contains("${"), "unexpected interpolation in {text}");
            vec![text.to_string()]
        }
    }
}

/// Volume entries as (host source, container target); named volumes have no `./`.
fn volumes(service: &Yaml) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .map(|v| {
            // Split on ':' outside `${…:-…}` interpolations.
            let mut parts = vec![String::new()];
            let mut depth = 0;
            for c in v.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ':' if depth == 0 => {
                        parts.push(String::new());
                        continue;
                    }
                    _ => {}
                }
                parts.last_mut().unwrap().push(c);
            }
            (parts[0].clone(), parts[1].clone())
        })
        .collect()
}

/// Dockerfile stages: name → (base, binaries copied into /usr/local/bin).
fn dockerfile_stages(path: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut stages = BTreeMap::new();
    let mut current = String::new();
    let text = read(path);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("FROM ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            current = words.last().unwrap().to_string();
            stages.insert(current.clone(), (words[0].to_string(), BTreeSet::new()));
        } else if let Some(rest) = line.strip_prefix("COPY ") {
            let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            if words.last() == Some(&"/usr/local/bin/") {
                let entry = stages.get_mut(&current).unwrap();
                for source in &words[..words.len() - 1] {
                    entry.1.insert(source.rsplit('/').next().unwrap().to_string());
                }
            }
        }
    }
    stages
}

/// Binaries in a stage, including those of the stages it is built on.
fn stage_binaries(stages: &BTreeMap<String, (String, BTreeSet<String>)>, stage: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut name = stage.to_string();
    while let Some((base, bins)) = stages.get(&name) {
        out.extend(bins.iter().cloned());
        name = base.clone();
    }
    out
}

/// Every binary target of the workspace, from `cargo metadata`.
fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut bins = BTreeSet::new();
    for package in metadata["packages"].as_array().unwrap() {
        for target in package["targets"].as_array().unwrap() {
            if target["kind"].as_array().unwrap().iter().any(|k| k == "bin") {
                bins.insert(target["name"].as_str().unwrap().to_string());
            }
        }
    }
    bins
}

/// What each service's config may contain: section → (required keys, optional keys).
/// A nested section (`[planner.control]`) is named with its dot.
/// Kept in step with the services' config structs (crates/gwb-*/src/config.rs and the
/// shared sections); a key a service does not know would stop it at start.
fn schema(service: &str) -> BTreeMap<&'static str, (Vec<&'static str>, Vec<&'static str>)> {
    let mut sections = BTreeMap::from([
        (
            "bus",
            (
                vec![],
                vec!["url", "namespace", "command_partitions", "prefetch", "delivery_limit", "confirm_timeout_seconds"],
            ),
        ),
        ("log", (vec![], vec!["format", "filter", "otlp_endpoint"])),
        ("metrics", (vec!["listen"], vec![])),
    ]);
    match service {
        "gwb-collector" => {
            sections.insert(
                "graph",
                (
                    vec!["tenant_id", "client_id", "client_secret_file"],
                    vec![
                        "login_endpoint",
                        "graph_endpoint",
                        "scope",
                        "api_version",
                        "request_timeout_seconds",
                        "max_retries",
                        "max_backoff_seconds",
                    ],
                ),
            );
            sections.insert(
                "collector",
                (vec![], vec!["poll_interval_seconds", "state_path", "max_pages_per_round", "round_timeout_seconds"]),
            );
            sections.insert(
                "collector.notifications",
                (vec!["listen", "public_url", "client_state_file"], vec!["subscription_minutes", "resources"]),
            );
            sections.insert("collector.control", (vec!["listen", "token_file"], vec![]));
        }
        "gwb-planner" => {
            sections.insert(
                "planner",
                (
                    vec!["default_ou"],
                    vec![
                        "state_path",
                        "security_ou",
                        "distribution_ou",
                        "retired_ou",
                        "name_template",
                        "member_batch_size",
                        "on_leave_scope",
                        "on_soft_delete",
                        "staging",
                    ],
                ),
            );
            sections.insert(
                "scope",
                (vec![], vec!["security_groups", "microsoft365_groups", "group_ids", "display_name_prefixes"]),
            );
            // `[planner.control]`; the deprecated top-level `[control]` must not ship.
            sections.insert("planner.control", (vec!["listen", "token_file"], vec![]));
            sections.insert("coordination", (vec![], vec!["collector_endpoint", "writer_endpoints", "token_file"]));
            sections.insert("deletion", (vec![], vec!["max_groups", "max_percent"]));
        }
        "gwb-writer" => {
            sections.insert(
                "directory",
                (
                    vec!["url", "ca_file", "bind_dn", "bind_password_file", "managed_ous"],
                    vec!["starttls", "operation_timeout_seconds", "member_batch_size"],
                ),
            );
            sections.insert("writer", (vec![], vec!["id", "partitions", "dry_run", "status_interval_seconds"]));
            // `[writer.control]`; the deprecated `[writer] control_listen` and
            // `control_token_file` must not ship.
            sections.insert("writer.control", (vec!["listen", "token_file"], vec![]));
        }
        other => panic!("no schema for {other}"),
    }
    sections
}

/// The config's sections by name, nested ones the schema knows (`[planner.control]`)
/// under their dotted name and taken out of their parent.
fn flatten(
    config: &toml::Table,
    schema: &BTreeMap<&'static str, (Vec<&'static str>, Vec<&'static str>)>,
) -> BTreeMap<String, toml::Table> {
    let mut sections = BTreeMap::new();
    for (section, value) in config {
        let mut table = value.as_table().unwrap_or_else(|| panic!("{section} is a section")).clone();
        for key in table.keys().cloned().collect::<Vec<_>>() {
            let nested = format!("{section}.{key}");
            if schema.contains_key(nested.as_str())
                && let Some(toml::Value::Table(inner)) = table.remove(&key)
            {
                sections.insert(nested, inner);
            }
        }
        sections.insert(section.clone(), table);
    }
    sections
}

/// Keys naming files the service reads.
const FILE_KEYS: &[&str] = &["client_secret_file", "token_file", "bind_password_file", "ca_file"];
const SECRET_KEYS: &[&str] = &["client_secret_file", "token_file", "bind_password_file"];

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn compose_services_match_images_configs_ports_and_secrets() {
    let compose = compose();
    let services = services(&compose);
    let declared_secrets: BTreeMap<String, String> = compose["secrets"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v["file"].as_str().unwrap().to_string()))
        .collect();
    for file in declared_secrets.values() {
        assert!(
            file.starts_with("./secrets/"),
            "secret files live in ./secrets (not in git, not in the build context): {file}"
        );
    }
    let named_volumes: BTreeSet<String> =
        compose["volumes"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect();
    let workspace_bins = workspace_binaries();
    let dockerignore = read(".dockerignore");
    assert!(dockerignore.lines().any(|l| l == "secrets") && dockerignore.lines().any(|l| l == "target"));

    let mut checked_configs = 0;
    for (name, service) in &services {
        // Build targets exist as Dockerfile stages, and their binaries are workspace bins.
        let mut image_bins = BTreeSet::new();
        if let Some(build) = service["build"].as_mapping() {
            let build = Yaml::Mapping(build.clone());
            let context = build["context"].as_str().unwrap();
            let dockerfile =
                format!("{}/{}", context.trim_end_matches('/'), build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            let dockerfile = dockerfile.trim_start_matches("./").to_string();
            assert!(repo().join(&dockerfile).exists(), "{name}: {dockerfile} missing");
            let stages = dockerfile_stages(&dockerfile);
            if let Some(target) = build["target"].as_str() {
                assert!(stages.contains_key(target), "{name}: no stage {target} in {dockerfile}");
                image_bins = stage_binaries(&stages, target);
                for bin in &image_bins {
                    assert!(
                        workspace_bins.contains(bin),
                        "{name}: image copies {bin}, which no workspace crate builds"
                    );
                }
                let entrypoint = read(&dockerfile)
                    .lines()
                    .skip_while(|l| !l.ends_with(&format!("AS {target}")))
                    .find(|l| l.starts_with("ENTRYPOINT"))
                    .unwrap_or_else(|| panic!("{target} has an ENTRYPOINT"))
                    .to_string();
                assert!(entrypoint.contains(&format!("\"{target}\"")), "{target} runs its own binary: {entrypoint}");
                assert!(image_bins.contains(target), "{target} image contains {target}");
            }
        } else {
            assert!(service["image"].as_str().is_some(), "{name}: neither build nor image");
        }

        // Bind-mounted host paths exist (except user-provided secrets), named volumes are declared.
        for (source, target) in volumes(service) {
            if source.starts_with("./") || source.starts_with("${") {
                for source in expansions(&source) {
                    if source.starts_with("./secrets/") {
                        continue;
                    }
                    assert!(repo().join(&source).exists(), "{name}: mounted {source} does not exist");
                }
            } else {
                assert!(named_volumes.contains(&source), "{name}: volume {source} not declared");
            }
            assert!(target.starts_with('/'), "{name}: {target}");
        }

        // Healthchecks name binaries the image contains.
        let test = strings(&service["healthcheck"]["test"]);
        if let (Some(kind), Some(program)) = (test.first(), test.get(1)) {
            assert_eq!(kind, "CMD", "{name}: exec-form healthcheck");
            if service["build"]["target"].as_str().is_some() {
                assert!(
                    image_bins.contains(program),
                    "{name}: healthcheck runs {program}, not in the image {image_bins:?}"
                );
            }
        }

        // depends_on uses conditions, on services that exist.
        if let Some(deps) = service["depends_on"].as_mapping() {
            for (dep, spec) in deps {
                let dep = dep.as_str().unwrap();
                assert!(services.contains_key(dep), "{name} depends on unknown {dep}");
                assert!(spec["condition"].as_str().is_some(), "{name} → {dep}: a condition");
                // Compose v1 (Debian's docker-compose 1.29) knows no `required: false`.
                assert!(spec["required"].is_null(), "{name} → {dep}: no `required` (Compose v1)");
            }
        }

        // The gwb services' configs.
        let Some(config_target) = volumes(service).into_iter().find(|(_, t)| t == &format!("/etc/gwb/{name}.toml"))
        else {
            continue;
        };
        let service_secrets: BTreeSet<String> = service["secrets"]
            .as_sequence()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|s| s["source"].as_str().or(s.as_str()).unwrap().to_string())
            .collect();
        for secret in &service_secrets {
            assert!(declared_secrets.contains_key(secret), "{name}: secret {secret} not declared");
        }
        let mounts: Vec<String> = volumes(service).into_iter().map(|(_, t)| t).collect();
        let published: Vec<u16> = strings(&service["ports"]).iter().map(|p| port_of(p)).collect();
        assert!(
            service["read_only"].as_bool() == Some(true) && service["restart"].as_str() == Some("unless-stopped"),
            "{name}: read-only root filesystem, restarted on a crash"
        );
        for path in expansions(&config_target.0) {
            let text = read(path.trim_start_matches("./"));
            let config: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            let schema = schema(name);
            let sections = flatten(&config, &schema);
            for (section, table) in &sections {
                let (required, optional) =
                    schema.get(section.as_str()).unwrap_or_else(|| panic!("{path}: {name} has no [{section}]"));
                for key in table.keys() {
                    assert!(
                        required.contains(&key.as_str()) || optional.contains(&key.as_str()),
                        "{path}: {name} does not read {section}.{key}"
                    );
                }
                for key in required {
                    assert!(table.contains_key(*key), "{path}: {section}.{key} is required");
                }
                for (key, value) in table {
                    if !FILE_KEYS.contains(&key.as_str()) {
                        continue;
                    }
                    let file = value.as_str().unwrap();
                    if let Some(secret) = file.strip_prefix("/run/secrets/") {
                        assert!(
                            service_secrets.contains(secret),
                            "{path}: {section}.{key} = {file} but {name} does not mount secret {secret}"
                        );
                    } else {
                        assert!(
                            mounts.iter().any(|m| file == m || file.starts_with(&format!("{m}/"))),
                            "{path}: {section}.{key} = {file} is not mounted into {name}"
                        );
                        assert!(
                            !SECRET_KEYS.contains(&key.as_str()) || file.starts_with("/var/lib/gwb-lab/"),
                            "{path}: {key} outside /run/secrets"
                        );
                    }
                }
            }
            for (section, (required, _)) in &schema {
                // A nested section is required only when its parent is.
                let parent_required = section.split_once('.').is_none_or(|(parent, _)| !schema[parent].0.is_empty());
                if !required.is_empty() && parent_required {
                    assert!(sections.contains_key(*section), "{path}: [{section}] is required");
                }
            }
            // Metrics reachable from other containers, on the healthcheck's port.
            let listen = config["metrics"]["listen"].as_str().unwrap();
            assert!(
                listen.starts_with("0.0.0.0:"),
                "{path}: metrics.listen {listen} must not be loopback in a container"
            );
            assert_eq!(test.get(2).map(|a| port_of(a)), Some(port_of(listen)), "{name}: healthcheck port");
            // The operator's control API (the planner's) is published.
            if let Some(control) = sections.get("planner.control").filter(|_| name == "gwb-planner") {
                let listen = control["listen"].as_str().unwrap();
                assert!(listen.starts_with("0.0.0.0:"));
                assert!(published.contains(&port_of(listen)), "{name}: control port {listen} published");
            }
            assert!(
                config["bus"]["url"].as_str().unwrap().contains("@rabbitmq:5672"),
                "{path}: broker is the rabbitmq service"
            );
            checked_configs += 1;
        }
    }
    assert_eq!(checked_configs, 6, "three services × (production, lab)");

    // The writer scales: replicas, and nothing that would collide between them.
    let writer = &services["gwb-writer"];
    assert!(writer["deploy"]["replicas"].as_u64().unwrap_or(0) >= 2);
    assert!(writer["ports"].is_null() && writer["container_name"].is_null());

    // The lab (docker-compose.lab.yml only): graph-sim and a Samba DC built from
    // deploy/samba, with its entrypoint; Grafana, which cannot be built from Debian
    // packages, behind a profile.
    let production = self::services(&parse("docker-compose.yml"));
    for lab in ["graph-sim", "samba-dc"] {
        assert!(services.contains_key(lab) && !production.contains_key(lab), "{lab} is a lab service");
    }
    assert_eq!(strings(&services["grafana"]["profiles"]), vec!["grafana"]);
    for (name, service) in &services {
        for port in strings(&service["ports"]) {
            assert!(port.starts_with("${GWB_"), "{name}: host port {port} is configurable");
        }
    }
    let samba = read("deploy/samba/Dockerfile");
    for script in ["entrypoint.sh", "healthcheck.sh"] {
        assert!(samba.contains(script));
        let path = repo().join("deploy/samba").join(script);
        use std::os::unix::fs::PermissionsExt;
        assert!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o111 != 0, "{script} is executable");
        let syntax = std::process::Command::new("bash").arg("-n").arg(&path).status().unwrap();
        assert!(syntax.success(), "{script} is valid bash");
    }
    let entrypoint = read("deploy/samba/entrypoint.sh");
    let lab_writer: toml::Table = toml::from_str(&read("deploy/config/lab/gwb-writer.toml")).unwrap();
    let directory = &lab_writer["directory"];
    assert!(directory["url"].as_str().unwrap().starts_with("ldaps://samba-dc:"));
    for (key, exported) in [("ca_file", "$EXPORT/ca.pem"), ("bind_password_file", "$EXPORT/admin-password")] {
        let file = directory[key].as_str().unwrap();
        assert!(entrypoint.contains(exported), "entrypoint exports {exported}");
        assert_eq!(file.rsplit('/').next(), exported.rsplit('/').next(), "{key}");
    }
    assert!(volumes(&services["samba-dc"]).contains(&("lab-ad".into(), "/export".into())));
    assert!(
        entrypoint.contains("GWB_UID:-10001") && read("deploy/Dockerfile").contains("--uid 10001"),
        "exported secret owned by the gwb user"
    );

    // RabbitMQ: management and prometheus plugins.
    let plugins = read("deploy/rabbitmq/enabled_plugins");
    assert!(plugins.contains("rabbitmq_management") && plugins.contains("rabbitmq_prometheus"));
}

#[test]
fn prometheus_and_grafana_files_match_compose() {
    let compose = compose();
    let services = services(&compose);
    let prometheus: Yaml = serde_norway::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    let mut jobs = BTreeSet::new();
    for job in prometheus["scrape_configs"].as_sequence().unwrap() {
        let name = job["job_name"].as_str().unwrap().to_string();
        let mut targets: Vec<String> = Vec::new();
        for sc in job["static_configs"].as_sequence().unwrap_or(&Vec::new()) {
            targets.extend(strings(&sc["targets"]));
        }
        for dns in job["dns_sd_configs"].as_sequence().unwrap_or(&Vec::new()) {
            let port = dns["port"].as_u64().unwrap();
            targets.extend(strings(&dns["names"]).into_iter().map(|n| format!("{n}:{port}")));
        }
        assert!(!targets.is_empty(), "{name}");
        for target in targets {
            let (host, port) = target.split_once(':').unwrap();
            assert!(services.contains_key(host), "{name}: {host} is not a compose service");
            if host.starts_with("gwb-") {
                let config: toml::Table = toml::from_str(&read(&format!("deploy/config/{host}.toml"))).unwrap();
                assert_eq!(
                    port_of(config["metrics"]["listen"].as_str().unwrap()),
                    port.parse::<u16>().unwrap(),
                    "{name}"
                );
            } else {
                assert_eq!((host, port), ("rabbitmq", "15692"), "RabbitMQ's prometheus plugin port");
            }
        }
        jobs.insert(name);
    }
    assert_eq!(jobs, BTreeSet::from(["gwb-collector", "gwb-planner", "gwb-writer", "rabbitmq"].map(String::from)));
    let prom_mounts: Vec<(String, String)> = volumes(&services["prometheus"]);
    assert!(
        prom_mounts.contains(&("./deploy/prometheus/prometheus.yml".into(), "/etc/prometheus/prometheus.yml".into()))
    );
    for rule in strings(&prometheus["rule_files"]) {
        assert!(
            prom_mounts.iter().any(|(_, t)| t == &format!("/etc/prometheus/{rule}")),
            "rule file {rule} mounted next to the config"
        );
    }

    // Grafana: provisioning mounted, datasource uid used by the dashboard, dashboard path.
    let grafana = volumes(&services["grafana"]);
    assert!(grafana.contains(&("./deploy/grafana/provisioning".into(), "/etc/grafana/provisioning".into())));
    assert!(grafana.contains(&("./deploy/grafana/dashboards".into(), "/var/lib/grafana/dashboards".into())));
    let datasource: Yaml =
        serde_norway::from_str(&read("deploy/grafana/provisioning/datasources/prometheus.yml")).unwrap();
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    assert_eq!(datasource["datasources"][0]["url"].as_str(), Some("http://prometheus:9090"));
    let provider: Yaml = serde_norway::from_str(&read("deploy/grafana/provisioning/dashboards/gwb.yml")).unwrap();
    assert_eq!(provider["providers"][0]["options"]["path"].as_str(), Some("/var/lib/grafana/dashboards"));
    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana/dashboards/gwb.json")).unwrap();
    let titles: Vec<String> =
        dashboard["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap().to_lowercase()).collect();
    for wanted in [
        "changes per second",
        "latency",
        "errors by class",
        "held for an operator",
        "queue depth",
        "ldap operation latency",
        "skipped members by reason",
        "drift",
        "contested groups",
    ] {
        assert!(titles.iter().any(|t| t.contains(wanted)), "dashboard panel {wanted:?} in {titles:?}");
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(panel["datasource"]["uid"].as_str(), Some(uid));
    }
}

/// Every gwb metric the catalog renders once each instrument has a value.
fn catalog() -> BTreeSet<String> {
    use gwb_runtime::metrics::Metrics;
    let m = Metrics::new("gwb-test").unwrap();
    m.graph_request(Some(200));
    m.events_published(1);
    m.delta_round("users", "ok");
    m.command("k", "applied");
    m.ldap_operation("add", "ok", Duration::from_millis(1));
    m.members_written(1);
    m.skipped_members("r", 1);
    m.held_deletions(0);
    m.held_member_removals(0);
    m.name_clashes(0);
    m.queue_lag("q", Duration::ZERO);
    m.end_to_end_latency(Duration::ZERO);
    m.dead_lettered("q");
    m.messages_published("k", 1);
    m.message_consumed("q", "ack");
    m.drift_detected("attribute");
    m.drift_repaired(1);
    m.contested_groups(0);
    m.drift_watch_operation();
    m.render()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

fn gwb_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("gwb_") {
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .fold(name.clone(), |n, s| n.strip_suffix(s).map(str::to_string).unwrap_or(n));
        names.insert(base);
    }
    names
}

#[test]
fn dashboards_alerts_and_readme_name_only_catalog_metrics() {
    let catalog = catalog();
    assert!(catalog.len() >= 18, "{catalog:?}");
    for file in ["deploy/grafana/dashboards/gwb.json", "deploy/prometheus/alerts.yml"] {
        for name in gwb_names(&read(file)) {
            assert!(catalog.contains(&name), "{file} uses {name}, which gwb_runtime::metrics does not export");
        }
    }
    let readme = read("README.md");
    for name in catalog.iter().filter(|n| n.starts_with("gwb_") || n.starts_with("process_")) {
        assert!(readme.contains(&format!("`{name}`")), "README's metrics table documents {name}");
    }
}

#[test]
fn promtool_accepts_config_and_rules_and_alert_tests_pass() {
    let Some(promtool) = promtool() else { return };
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new(&promtool).args(&args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// promtool, installed with the Debian prometheus package when missing.
fn promtool() -> Option<PathBuf> {
    let status = std::process::Command::new(repo().join("scripts/ensure-prometheus.sh")).output();
    match status {
        Ok(out) if out.status.success() => Some(PathBuf::from("promtool")),
        other => {
            if std::env::var_os("GWB_SKIP_PROMETHEUS").is_some() {
                eprintln!("skipping: promtool unavailable");
                return None;
            }
            panic!("promtool is needed (scripts/ensure-prometheus.sh: {other:?}); GWB_SKIP_PROMETHEUS=1 skips");
        }
    }
}
