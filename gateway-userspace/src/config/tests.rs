//! Tests of parsing and validation.
use std::{path::Path, time::Duration};

use super::{error::line_of, health::parse_status_range, *};
use crate::maglev::is_prime;

const EXAMPLE: &str = include_str!("../../../examples/gateway.toml");
const EXAMPLE_BGP: &str = include_str!("../../../examples/gateway-bgp.toml");

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse(s, Path::new("test.toml"))
}

/// The issues of a config that must be rejected by validation.
fn issues(s: &str) -> Vec<Issue> {
    match parse(s) {
        Err(ConfigError::Invalid { issues, .. }) => issues,
        other => panic!("expected validation issues, got {other:?}"),
    }
}

/// The one issue with `field` (and that there is exactly one).
fn only(s: &str, field: &str) -> Issue {
    let all = issues(s);
    let found: Vec<_> = all.iter().filter(|i| i.field == field).collect();
    assert_eq!(found.len(), 1, "one issue with {field} in {all:#?}");
    found[0].clone()
}

#[test]
fn paths_must_be_absolute() {
    let text = "[dataplane]\ninterface = \"eth0\"\npin_dir = \"gw\"\n\
                [admin]\ntoken_file = \"/a/../b\"\nstate_file = \"x.json\"\n";
    for field in ["dataplane.pin_dir", "admin.token_file", "admin.state_file"] {
        let i = only(text, field);
        assert!(i.message.contains("is not an absolute path"), "{i:?}");
    }
    let c = parse("[dataplane]\ninterface = \"eth1\"\n").unwrap();
    assert_eq!(c.dataplane.pin_dir, Path::new("/sys/fs/bpf/gateway/eth1"));
}

#[test]
fn a_non_loopback_admin_api_needs_a_token() {
    let text = "[dataplane]\ninterface = \"eth0\"\n[admin]\nlisten = \"0.0.0.0:9180\"\n";
    let i = only(text, "admin.token_file");
    assert!(i.message.contains("not a loopback address"), "{i:?}");
    let ok = format!("{text}token_file = \"/etc/gateway/token\"\n");
    assert!(parse(&ok).is_ok());
}

/// The 1-based line of the only line containing `needle`.
fn line(s: &str, needle: &str) -> usize {
    let lines: Vec<usize> = s
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} on one line");
    lines[0]
}

const DP: &str = "[dataplane]\ninterface = \"eth0\"\nipip_source_v4 = \"198.18.0.2\"\n";

fn with_dp(rest: &str) -> String {
    format!("{DP}{rest}")
}

#[test]
fn example_parses() {
    let c = Config::parse(EXAMPLE, Path::new("examples/gateway.toml")).unwrap();
    assert_eq!(c.dataplane.interface, "eth0");
    assert_eq!(c.dataplane.ipip_source_v6, Some("fd00::2".parse().unwrap()));
    assert_eq!(c.services.len(), 2);
    let web = &c.services[0];
    assert_eq!(
        (web.name.as_str(), web.mode, web.protocol),
        ("web", Mode::L2dsr, Protocol::Tcp)
    );
    assert!(web.vip.is_ipv4());
    assert!(matches!(web.health.kind, CheckKind::Http(_)));
    assert!(web.backends.len() >= 2);
    let v6 = &c.services[1];
    assert_eq!((v6.mode, v6.protocol), (Mode::Ipip, Protocol::Udp));
    assert!(v6.vip.is_ipv6() && v6.backends.iter().all(|b| b.address.is_ipv6()));
    // Every key in the example is one the parser knows: nothing is silently ignored.
    for b in c.services.iter().flat_map(|s| &s.backends) {
        assert!(is_prime(c.dataplane.max_table_size) && b.weight >= 1);
    }
}

#[test]
fn defaults_are_applied() {
    let c = parse(
        "[dataplane]\ninterface = \"eth0\"\n\n[[service]]\nname = \"a\"\nvip = \"198.18.1.1\"\n\
         port = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n\n[[service.backend]]\n\
         address = \"198.18.0.11\"\n",
    )
    .unwrap();
    let d = &c.dataplane;
    assert_eq!(
        *d,
        DataplaneConfig {
            interface: "eth0".into(),
            xdp_mode: XdpMode::Auto,
            conntrack_size: 1_048_576,
            mtu: 1500,
            idle_timeout: Duration::from_secs(3600),
            max_services: 16,
            max_table_size: 65537,
            ipip_source_v4: None,
            ipip_source_v4_vary_bits: 0,
            ipip_source_v6: None,
            checks_off: 0,
            extra_macs: vec![],
            nat_size: 262_144,
            snat_v4: vec![],
            snat_v6: vec![],
            snat_ports: 1024..=65535,
            kernel_log: KernelLog::Warn,
            pin_dir: "/sys/fs/bpf/gateway/eth0".into(),
            on_exit: OnExit::Detach,
        }
    );
    assert_eq!(c.admin.listen, "127.0.0.1:9180".parse().unwrap());
    let s = &c.services[0];
    assert_eq!(s.table_size, 65537);
    assert_eq!(s.slowstart, Duration::ZERO);
    assert_eq!(s.panic_threshold, None);
    let health = HealthConfig {
        kind: CheckKind::Tcp,
        port: 80,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 3,
        passive_fall: 3,
        fast_interval: Duration::from_millis(250),
        down_interval: Duration::from_secs(2),
        jitter: 0.1,
        initial_up: false,
    };
    assert_eq!(s.health, health);
    assert_eq!(
        s.backends,
        vec![BackendConfig {
            address: "198.18.0.11".parse().unwrap(),
            weight: 100,
            backup: false,
            state: AdminState::Ready,
            health,
        }]
    );
}

#[test]
fn http_defaults_and_derived_intervals() {
    let c = parse(&with_dp(
        "[[service]]\nname = \"a\"\nvip = \"198.18.1.1\"\nport = 443\nprotocol = \"tcp\"\n\
         mode = \"l2dsr\"\n[service.health]\nkind = \"http\"\ninterval = \"20ms\"\n\
         timeout = \"20ms\"\n",
    ))
    .unwrap();
    let h = &c.services[0].health;
    assert_eq!(h.port, 443);
    // interval/4 = 5ms is raised to the 10ms floor.
    assert_eq!(h.fast_interval, Duration::from_millis(10));
    assert_eq!(h.down_interval, Duration::from_millis(40));
    assert_eq!(
        h.kind,
        CheckKind::Http(std::sync::Arc::new(HttpCheck {
            path: "/".into(),
            host: None,
            expect_status: vec![200..=399],
            body_contains: None,
        }))
    );
}

#[test]
fn a_service_without_backends_is_fine() {
    let c = parse(&with_dp(
        "[[service]]\nname = \"empty\"\nvip = \"198.18.1.1\"\nport = 80\nprotocol = \"udp\"\nmode = \"ipip\"\n",
    ))
    .unwrap();
    assert!(c.services[0].backends.is_empty());
}

#[test]
fn unknown_key_names_file_line_and_field() {
    let err = parse("[dataplane]\ninterface = \"eth0\"\nintreface = \"x\"\n").unwrap_err();
    let ConfigError::Parse { line, field, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (*line, field.as_deref()),
        (Some(3), Some("dataplane.intreface"))
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("test.toml:3: dataplane.intreface: unknown field `intreface`"),
        "{msg}"
    );
}

#[test]
fn type_errors_name_the_key_inside_inline_tables() {
    let text = with_dp(
        "[[service]]\nname = \"a\"\nvip = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"l2dsr\"\nbackend = [ { address = \"198.18.0.11\", health = { rise = \"x\" } } ]\n",
    );
    let err = parse(&text).unwrap_err();
    let ConfigError::Parse { line, field, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*line, Some(line_of(&text, text.find("rise").unwrap())));
    assert_eq!(field.as_deref(), Some("service.backend.health.rise"));
    // An unknown key in a backend's override.
    let err = parse(&text.replace("rise = \"x\"", "rsie = 2")).unwrap_err();
    assert!(
        err.to_string()
            .contains(": service.backend.health.rsie: unknown field"),
        "{err}"
    );
}

#[test]
fn bad_enum_value_is_rejected_with_its_key() {
    let err = parse("[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"fast\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("test.toml:3: dataplane.xdp_mode: unknown variant `fast`"),
        "{msg}"
    );
}

#[test]
fn missing_required_keys_are_named() {
    let err = parse("[dataplane]\nmtu = 1500\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("test.toml:1: dataplane: missing field `interface`"),
        "{err}"
    );
    let err = parse("[admin]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
    assert_eq!(err.to_string(), "test.toml:1: missing field `dataplane`");
    let err = parse(&with_dp("[[service]]\nname = \"a\"\n")).unwrap_err();
    assert!(
        err.to_string().contains(":4: service: missing field `vip`"),
        "{err}"
    );
}

const TWO: &str = r#"[dataplane]
interface = "eth0"

[[service]]
name = "web"
vip = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "l2dsr"

[[service.backend]]
address = "198.18.0.11"

[[service.backend]]
address = "198.18.0.11"

[[service]]
name = "web"
vip = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "l2dsr"
"#;

#[test]
fn duplicates_are_reported_where_they_repeat() {
    let all = issues(TWO);
    assert_eq!(all.len(), 3, "{all:#?}");
    let msg = ConfigError::Invalid {
        path: "gateway.toml".into(),
        issues: all.clone(),
    }
    .to_string();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(
        lines,
        [
            "gateway.toml:15: service \"web\": backend.address: 198.18.0.11 listed twice (first at line 12)",
            "gateway.toml:18: service \"web\": name: \"web\" is already the name of the service at line 5",
            "gateway.toml:19: service \"web\": vip: 198.18.1.1 port 80/tcp is already used by service \"web\" (line 5)",
        ]
    );
    // Another protocol on the same VIP and port is a different service.
    let fixed = TWO.replacen("address = \"198.18.0.11\"", "address = \"198.18.0.12\"", 1);
    let fixed = fixed.replacen("name = \"web\"", "name = \"dns\"", 1);
    let fixed = fixed.replacen("protocol = \"tcp\"", "protocol = \"udp\"", 1);
    parse(&fixed).unwrap();
}

#[test]
fn ipv6_backend_duplicates_compare_addresses_not_text() {
    let text = with_dp(
        "[[service]]\nname = \"a\"\nvip = \"fd00:1::1\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"l2dsr\"\n[[service.backend]]\naddress = \"fd00::11\"\n\
         [[service.backend]]\naddress = \"fd00:0:0::0011\"\n",
    );
    let i = only(&text, "backend.address");
    assert_eq!(i.line, line(&text, "fd00:0:0::0011"));
    assert!(i.message.contains("listed twice"), "{i}");
}

fn service(extra: &str, backends: &str) -> String {
    with_dp(&format!(
        "[[service]]\nname = \"s\"\nvip = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"l2dsr\"\n{extra}\n{backends}"
    ))
}

const B1: &str = "[[service.backend]]\naddress = \"198.18.0.11\"\n";

#[test]
fn bad_addresses() {
    let text = service("", "[[service.backend]]\naddress = \"198.18.0.300\"\n")
        .replace("vip = \"198.18.1.1\"", "vip = \"0.0.0.0\"");
    let all = issues(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        (all[0].line, all[0].field.as_str()),
        (line(&text, "0.0.0.0"), "vip")
    );
    assert!(all[0].message.contains("unspecified"), "{}", all[0]);
    assert_eq!(
        (all[1].line, all[1].field.as_str()),
        (line(&text, "198.18.0.300"), "backend.address")
    );

    let text = with_dp("[admin]\nlisten = \"localhost\"\n");
    assert_eq!(only(&text, "admin.listen").line, 5);
    let text = "[dataplane]\ninterface = \"eth0\"\nipip_source_v6 = \"198.18.0.2\"\n";
    assert_eq!(only(text, "dataplane.ipip_source_v6").line, 3);
}

#[test]
fn backend_family_must_match_the_vip() {
    let text = service("", "[[service.backend]]\naddress = \"fd00::11\"\n");
    let i = only(&text, "backend.address");
    assert_eq!(i.line, line(&text, "fd00::11"));
    assert!(i.message.contains("same family"), "{i}");
}

#[test]
fn table_size_rules() {
    let not_prime = service("table_size = 1000", B1);
    let i = only(&not_prime, "table_size");
    assert_eq!(i.line, line(&not_prime, "table_size"));
    assert!(i.message.contains("not prime"), "{i}");

    let too_small = service("table_size = 2", B1);
    assert!(
        only(&too_small, "table_size")
            .message
            .contains("out of range 3..")
    );

    let three: String = (11..=13)
        .map(|n| format!("[[service.backend]]\naddress = \"198.18.0.{n}\"\n"))
        .collect();
    let few = service("table_size = 3", &three);
    assert!(
        only(&few, "table_size")
            .message
            .contains("larger than the number of backends (3)")
    );

    let over = service("table_size = 131071", B1);
    let i = only(&over, "table_size");
    assert!(
        i.message
            .contains("larger than dataplane.max_table_size (65537)"),
        "{i}"
    );
    parse(&over.replace("[dataplane]\n", "[dataplane]\nmax_table_size = 131071\n")).unwrap();

    let not_prime_max =
        with_dp("").replace("[dataplane]\n", "[dataplane]\nmax_table_size = 65536\n");
    assert_eq!(only(&not_prime_max, "dataplane.max_table_size").line, 2);
}

#[test]
fn a_smaller_max_table_size_lowers_the_default_table_size() {
    let text = service("", B1).replace("[dataplane]\n", "[dataplane]\nmax_table_size = 1021\n");
    assert_eq!(parse(&text).unwrap().services[0].table_size, 1021);
}

#[test]
fn weight_out_of_range() {
    let text = service(
        "",
        "[[service.backend]]\naddress = \"198.18.0.11\"\nweight = 0\n",
    );
    let i = only(&text, "backend.weight");
    assert_eq!(i.line, line(&text, "weight"));
    assert_eq!(i.service.as_deref(), Some("s"));
    assert!(i.message.contains("0 is out of range 1..=10000"), "{i}");
    parse(&text.replace("weight = 0", "weight = 10000")).unwrap();
}

#[test]
fn more_services_than_max_services() {
    let mut text = with_dp("").replace("[dataplane]\n", "[dataplane]\nmax_services = 2\n");
    for n in 1..=3 {
        text += &format!("[[service]]\nname = \"s{n}\"\nvip = \"198.18.1.{n}\"\n");
        if n < 3 {
            text += "port = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n";
        }
    }
    // Reported at the first service too many, in line order with its other issues.
    let bad_port = format!("{}port = 0\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n", text);
    let all = issues(&bad_port);
    let got: Vec<(usize, &str)> = all.iter().map(|i| (i.line, i.field.as_str())).collect();
    let header = line(&text, "name = \"s3\"") - 1;
    assert_eq!(got, [(header, "service"), (header + 3, "port")]);
    let text = format!("{text}port = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n");
    let i = only(&text, "service");
    assert_eq!(i.service.as_deref(), Some("s3"));
    assert_eq!(i.line, header);
    assert!(
        i.message
            .contains("3 services, but dataplane.max_services is 2"),
        "{i}"
    );
    assert!(parse(&text.replace("max_services = 2", "max_services = 3")).is_ok());
}

#[test]
fn mtu_range() {
    for (mtu, ok) in [
        (0, true),
        (1280, true),
        (9000, true),
        (1279, false),
        (70000, false),
    ] {
        let text = format!("[dataplane]\ninterface = \"eth0\"\nmtu = {mtu}\n");
        match parse(&text) {
            Ok(c) => assert!(ok && c.dataplane.mtu == mtu, "{mtu}"),
            Err(_) => {
                assert!(!ok, "{mtu}");
                assert_eq!(only(&text, "dataplane.mtu").line, 3);
            }
        }
    }
}

#[test]
fn dataplane_ranges() {
    let text = "[dataplane]\ninterface = \"a/b\"\nconntrack_size = 10\nmax_services = 0\n\
                ipip_source_v4_vary_bits = 17\n";
    let fields: Vec<(usize, String)> = issues(text)
        .into_iter()
        .map(|i| (i.line, i.field))
        .collect();
    assert_eq!(
        fields,
        [
            (2, "dataplane.interface".to_string()),
            (3, "dataplane.conntrack_size".to_string()),
            (4, "dataplane.max_services".to_string()),
            (5, "dataplane.ipip_source_v4_vary_bits".to_string()),
        ]
    );
}

#[test]
fn timeout_longer_than_interval() {
    let text = service(
        "[service.health]\ninterval = \"1s\"\ntimeout = \"2s\"\n",
        B1,
    );
    let i = only(&text, "health.timeout");
    assert_eq!(i.line, line(&text, "timeout"));
    assert!(i.message.contains("longer than interval"), "{i}");
    // Reported once, though every backend inherits the check, one with an override.
    assert_eq!(issues(&text).len(), 1);
    let text = format!(
        "{text}[[service.backend]]\naddress = \"198.18.0.12\"\nhealth = {{ port = 8080 }}\n"
    );
    assert_eq!(issues(&text).len(), 1, "{:#?}", issues(&text));

    // A backend override that shortens the interval below the service's timeout is
    // blamed on the override.
    let text = service(
        "[service.health]\ntimeout = \"800ms\"\n",
        "[[service.backend]]\naddress = \"198.18.0.11\"\nhealth = { interval = \"500ms\" }\n",
    );
    let i = only(&text, "backend.health.interval");
    assert_eq!(i.line, line(&text, "health = {"));
    // A default that breaks the rule is blamed on the key that was written.
    let short = service("[service.health]\ninterval = \"200ms\"\n", "");
    assert_eq!(only(&short, "health.interval").line, line(&short, "200ms"));
    // Equal is fine.
    parse(&text.replace("800ms", "500ms")).unwrap();
}

#[test]
fn check_durations_have_a_floor() {
    let text = service(
        "[service.health]\ninterval = \"5ms\"\ndown_interval = \"1 s\"\n",
        "",
    );
    let all = issues(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        (all[0].line, all[0].field.as_str()),
        (line(&text, "interval = \"5ms\""), "health.interval")
    );
    assert!(all[0].message.contains("out of range 10ms"), "{}", all[0]);
    assert_eq!(
        (all[1].line, all[1].field.as_str()),
        (line(&text, "1 s"), "health.down_interval")
    );
    assert!(all[1].message.contains("unknown unit"), "{}", all[1]);
    let text = service("slowstart = \"2h\"\n", "");
    assert!(
        only(&text, "slowstart")
            .message
            .contains("out of range 0ns..=3600s")
    );
}

#[test]
fn http_only_keys_need_an_http_check() {
    let text = service(
        "[service.health]\npath = \"/healthz\"\nexpect_status = [\"200\"]\n",
        "",
    );
    let all = issues(&text);
    let fields: Vec<(usize, &str)> = all.iter().map(|i| (i.line, i.field.as_str())).collect();
    assert_eq!(
        fields,
        [
            (line(&text, "path ="), "health.path"),
            (line(&text, "expect_status"), "health.expect_status")
        ]
    );
    assert!(all[0].message.contains("kind = \"http\""), "{}", all[0]);
    // A backend that switches an http service to tcp simply does not use them...
    let http = text.replace("[service.health]\n", "[service.health]\nkind = \"http\"\n");
    let c = parse(&format!("{http}{B1}health = {{ kind = \"tcp\" }}\n")).unwrap();
    assert_eq!(c.services[0].backends[0].health.kind, CheckKind::Tcp);
    // ...but may not set them itself.
    let text = service("", &format!("{B1}health = {{ host = \"example.org\" }}\n"));
    assert_eq!(only(&text, "backend.health.host").line, line(&text, "host"));
}

#[test]
fn ipip_needs_the_matching_source() {
    let v4 = service("", B1).replace("mode = \"l2dsr\"", "mode = \"ipip\"");
    parse(&v4).unwrap();
    let text = v4.replace("ipip_source_v4 = \"198.18.0.2\"\n", "");
    let i = only(&text, "mode");
    assert_eq!(i.line, line(&text, "mode"));
    assert!(i.message.contains("dataplane.ipip_source_v4"), "{i}");

    let v6 = service("", "")
        .replace("mode = \"l2dsr\"", "mode = \"ipip\"")
        .replace("vip = \"198.18.1.1\"", "vip = \"fd00:1::1\"");
    assert!(
        only(&v6, "mode")
            .message
            .contains("dataplane.ipip_source_v6")
    );
    // A bad source is reported as bad, not again as missing.
    let bad = v4.replace("\"198.18.0.2\"", "\"nope\"");
    let all = issues(&bad);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].field, "dataplane.ipip_source_v4");
}

#[test]
fn status_ranges() {
    assert_eq!(parse_status_range("200-299"), Ok(200..=299));
    assert_eq!(parse_status_range("204"), Ok(204..=204));
    for bad in [
        "", "2xx", "99", "600", "299-200", "200-", "0200", "200-600", " 200",
    ] {
        assert!(parse_status_range(bad).is_err(), "{bad:?}");
    }
    let text = service(
        "[service.health]\nkind = \"http\"\nexpect_status = [\n  \"200-299\",\n  204,\n  \"300-200\",\n  \"700\",\n]\n",
        "",
    );
    let all = issues(&text);
    let lines: Vec<usize> = all.iter().map(|i| i.line).collect();
    assert_eq!(lines, [line(&text, "300-200"), line(&text, "700")]);
    assert!(all.iter().all(|i| i.field == "health.expect_status"));
    let ok = text.replace("  \"300-200\",\n  \"700\",\n", "");
    let CheckKind::Http(h) = &parse(&ok).unwrap().services[0].health.kind else {
        panic!("not http")
    };
    assert_eq!(h.expect_status, [200..=299, 204..=204]);
    let empty = service(
        "[service.health]\nkind = \"http\"\nexpect_status = []\n",
        "",
    );
    assert_eq!(
        only(&empty, "health.expect_status").line,
        line(&empty, "expect_status")
    );
}

#[test]
fn several_problems_are_all_reported() {
    let text = r#"[dataplane]
interface = "eth0"
mtu = 100

[[service]]
name = "Web"
vip = "198.18.1.1"
port = 0
protocol = "tcp"
mode = "l2dsr"
panic_threshold = 1.0

[service.health]
timeout = "nope"
jitter = 0.9

[[service.backend]]
address = "fd00::11"
weight = 20000
"#;
    let all = issues(text);
    let got: Vec<(usize, &str)> = all.iter().map(|i| (i.line, i.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (3, "dataplane.mtu"),
            (6, "name"),
            (8, "port"),
            (11, "panic_threshold"),
            (14, "health.timeout"),
            (15, "health.jitter"),
            (18, "backend.address"),
            (19, "backend.weight"),
        ]
    );
    let err = parse(text).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 8, "{err}");
    assert!(err.lines().all(|l| l.starts_with("test.toml:")), "{err}");
}

#[test]
fn backend_health_override_merges_with_the_service_check() {
    let text = service(
        "[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"2s\"\nrise = 5\n",
        "[[service.backend]]\naddress = \"198.18.0.11\"\n\
         [[service.backend]]\naddress = \"198.18.0.12\"\nhealth = { port = 8080, interval = \"4s\", initial = \"up\" }\n",
    );
    let c = parse(&text).unwrap();
    let s = &c.services[0];
    let (plain, over) = (&s.backends[0].health, &s.backends[1].health);
    assert_eq!(*plain, s.health);
    assert_eq!(
        (plain.port, plain.interval, plain.initial_up),
        (80, Duration::from_secs(2), false)
    );
    assert_eq!(
        (over.port, over.interval, over.initial_up),
        (8080, Duration::from_secs(4), true)
    );
    // Inherited from the service, and defaults derived from the merged interval.
    assert_eq!(over.rise, 5);
    assert_eq!(over.kind, s.health.kind);
    assert_eq!(over.down_interval, Duration::from_secs(8));
    assert_eq!(over.fast_interval, Duration::from_secs(1));
}

#[test]
fn durations_parse() {
    let ms = Duration::from_millis;
    for (s, d) in [
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
        ("250ms", ms(250)),
        ("1s", ms(1000)),
        ("1.5s", ms(1500)),
        ("0.25s", ms(250)),
        ("2m", ms(120_000)),
        ("1h", ms(3_600_000)),
        ("1.5ms", Duration::from_micros(1500)),
    ] {
        assert_eq!(parse_duration(s), Ok(d), "{s}");
    }
    for s in [
        "",
        "1",
        "s",
        "1.s",
        ".5s",
        "-1s",
        "1 s",
        "1sec",
        "1e3ms",
        "1.0000000001s",
        "99999999999999999999h",
    ] {
        assert!(parse_duration(s).is_err(), "{s:?}");
    }
}

#[test]
fn load_names_the_file() {
    let path =
        std::env::temp_dir().join(format!("gateway-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, "[dataplane]\ninterface = \"eth0\"\nmtu = 1\n").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(
        err.starts_with(&format!("{}:3: dataplane.mtu: ", path.display())),
        "{err}"
    );
    let err = Config::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(chain.matches("os error").count(), 1, "{chain}");
}

/// A small deterministic generator for the mutation test (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Odd things to put where a value, a key or a bit of syntax was.
const ODD: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    "\0",
    "é",
    "\"é",
    "x = \"é",
    "日本",
    "\u{1F600}",
    "\u{FEFF}",
    "-1",
    "0",
    "1e400",
    "nan",
    "inf",
    "9223372036854775808",
    "\"\"",
    "\"0\"",
    "true",
    "[]",
    "{}",
    "\"::\"",
    "\"0.0.0.0\"",
    "\"1h\"",
    "\"99999h\"",
    "\"0ms\"",
    "\"1.5\"",
    "\\",
    "\n",
    "#",
    "\"\\u0000\"",
    "\"\\uD800\"",
];

#[test]
fn fullnat_needs_the_matching_snat_pool() {
    let v4 = service("", B1).replace("mode = \"l2dsr\"", "mode = \"fullnat\"");
    let i = only(&v4, "mode");
    assert_eq!(i.line, line(&v4, "mode"));
    assert!(i.message.contains("dataplane.snat_v4"), "{i}");
    let with_pool = v4.replace(
        "[dataplane]\n",
        "[dataplane]\nsnat_v4 = [\"198.18.0.100\", \"198.18.0.101\"]\nsnat_ports = \"20000-29999\"\n",
    );
    let c = parse(&with_pool).unwrap();
    assert_eq!(c.services[0].mode, Mode::Fullnat);
    assert_eq!(c.dataplane.snat_v4.len(), 2);
    assert_eq!(c.dataplane.snat_ports, 20000..=29999);
    // The v4 pool does not serve an IPv6 VIP.
    let v6 = with_pool
        .replace("vip = \"198.18.1.1\"", "vip = \"fd00:1::1\"")
        .replace("198.18.0.11", "fd00::11");
    assert!(only(&v6, "mode").message.contains("dataplane.snat_v6"));
}

#[test]
fn snat_pools_and_ports_are_checked() {
    let dp = |keys: &str| format!("[dataplane]\ninterface = \"eth0\"\n{keys}\n");
    for (keys, field, says) in [
        (
            "snat_v4 = [\"fd00::1\"]",
            "dataplane.snat_v4",
            "not an IPv4 address",
        ),
        (
            "snat_v6 = [\"198.18.0.1\"]",
            "dataplane.snat_v6",
            "not an IPv6 address",
        ),
        (
            "snat_v4 = [\"127.0.0.1\"]",
            "dataplane.snat_v4",
            "127.0.0.1 is",
        ),
        (
            "snat_v4 = [\"198.18.0.1\", \"198.18.0.1\"]",
            "dataplane.snat_v4",
            "listed twice",
        ),
        (
            "snat_ports = \"100\"",
            "dataplane.snat_ports",
            "not a port range",
        ),
        (
            "snat_ports = \"2000-1000\"",
            "dataplane.snat_ports",
            "not a port range",
        ),
        (
            "snat_ports = \"0-1000\"",
            "dataplane.snat_ports",
            "not a port range",
        ),
        (
            "snat_ports = \"1-70000\"",
            "dataplane.snat_ports",
            "not a port range",
        ),
        ("nat_size = 10", "dataplane.nat_size", "out of range"),
    ] {
        let i = only(&dp(keys), field);
        assert!(i.message.contains(says), "{keys}: {i}");
    }
    let nine: Vec<String> = (1..=9).map(|i| format!("\"198.18.0.{i}\"")).collect();
    let i = only(
        &dp(&format!("snat_v4 = [{}]", nine.join(", "))),
        "dataplane.snat_v4",
    );
    assert!(i.message.contains("at most 8"), "{i}");
    // A SNAT address is no VIP.
    let text =
        service("", B1).replace("[dataplane]\n", "[dataplane]\nsnat_v4 = [\"198.18.1.1\"]\n");
    assert!(only(&text, "vip").message.contains("also a SNAT address"));
}

/// One random edit of `text`: drop, repeat or swap lines, or put something odd at a
/// random character boundary (or in place of a line's value).
fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len();
    match rng.below(6) {
        0 => {
            lines.remove(rng.below(n));
        }
        1 => {
            let l = lines[rng.below(n)].clone();
            lines.insert(rng.below(n), l);
        }
        2 => lines.swap(rng.below(n), rng.below(n)),
        3 => {
            let i = rng.below(n);
            if let Some((k, _)) = lines[i].split_once('=') {
                lines[i] = format!("{k}= {}", ODD[rng.below(ODD.len())]);
            }
        }
        4 => {
            let i = rng.below(n);
            let bounds: Vec<usize> = (0..=lines[i].len())
                .filter(|b| lines[i].is_char_boundary(*b))
                .collect();
            let at = bounds[rng.below(bounds.len())];
            lines[i].insert_str(at, ODD[rng.below(ODD.len())]);
        }
        _ => {
            let i = rng.below(n);
            let keep = lines[i].chars().count();
            lines[i] = lines[i].chars().take(rng.below(keep + 1)).collect();
        }
    }
    lines.join("\n")
}

/// A full-NAT configuration for the mutation run.
const FULLNAT: &str = "[dataplane]\ninterface = \"eth0\"\nnat_size = 65536\n\
snat_v4 = [\"198.18.0.100\", \"198.18.0.101\"]\nsnat_v6 = [\"fd00::100\"]\n\
snat_ports = \"20000-29999\"\n\n[[service]]\nname = \"api\"\nvip = \"198.18.1.1\"\nport = 443\n\
protocol = \"tcp\"\nmode = \"fullnat\"\n\n[[service.backend]]\naddress = \"198.18.0.11\"\n\n\
[[service]]\nname = \"dns6\"\nvip = \"fd00:1::1\"\nport = 53\nprotocol = \"udp\"\nmode = \"fullnat\"\n\
health = { kind = \"none\" }\n\n[[service.backend]]\naddress = \"fd00::11\"\n";

/// Mutated copies of the example are accepted or rejected with an error that names
/// the file and a line; none panics (a panic here once killed a reloading agent).
#[test]
fn mutated_examples_never_panic() {
    let seed = 0x0067_6174_6577_6179_u64;
    let mut rng = Rng(seed);
    let (mut ok, mut rejected) = (0, 0);
    for case in 0..3000 {
        let mut text = match case % 4 {
            2 => EXAMPLE_BGP.to_string(),
            3 => FULLNAT.to_string(),
            _ => EXAMPLE.to_string(),
        };
        for _ in 0..1 + rng.below(4) {
            text = mutate(&mut rng, &text);
        }
        let result = std::panic::catch_unwind(|| parse(&text));
        let Ok(result) = result else {
            panic!("case {case} (seed {seed:#x}) panicked on:\n{text}");
        };
        match result {
            Ok(_) => ok += 1,
            Err(e) => {
                rejected += 1;
                let msg = e.to_string();
                let after = msg.strip_prefix("test.toml:").unwrap_or("");
                assert!(
                    after.starts_with(|c: char| c.is_ascii_digit()),
                    "case {case}: no line in {msg:?} for:\n{text}"
                );
            }
        }
    }
    // Both outcomes are exercised, or the mutations are too weak (or too strong).
    assert!(ok > 100 && rejected > 1000, "ok {ok}, rejected {rejected}");
}

#[test]
fn an_unterminated_string_with_a_multibyte_character_is_an_error() {
    let text = format!("{EXAMPLE}\nx = \"é\n");
    let err = parse(&text).unwrap_err();
    let ConfigError::Parse { line, field, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*line, Some(text.lines().count()));
    assert!(field.as_deref().is_some_and(|f| f.ends_with(".x")), "{err}");
}

/// Each enum's word (status, reports, metrics) is the word the config file takes.
#[test]
fn enum_words_are_the_config_words() {
    fn round<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: T, word: &str) {
        let back: T = serde_json::from_str(&format!("\"{word}\"")).expect(word);
        assert_eq!(back, v, "{word}");
    }
    for v in [XdpMode::Auto, XdpMode::Native, XdpMode::Generic] {
        round(v, v.as_str());
    }
    for v in [OnExit::Detach, OnExit::Keep] {
        round(v, v.as_str());
    }
    for v in [
        KernelLog::Off,
        KernelLog::Error,
        KernelLog::Warn,
        KernelLog::Info,
        KernelLog::Debug,
    ] {
        round(v, v.as_str());
    }
    for v in [Protocol::Tcp, Protocol::Udp] {
        round(v, v.as_str());
    }
    for v in [Mode::L2dsr, Mode::Ipip] {
        round(v, v.as_str());
    }
    for v in [AdminState::Ready, AdminState::Drain, AdminState::Maint] {
        round(v, &v.to_string());
    }
}

#[test]
fn skip_checks_names_checks_and_refuses_unknown_ones() {
    let base = "[dataplane]\ninterface = \"eth0\"\n";
    let c = Config::parse(
        &format!("{base}skip_checks = [\"ipv4_checksum\", \"martian_source\"]\n"),
        Path::new("t.toml"),
    )
    .unwrap();
    assert_eq!(
        c.dataplane.checks_off,
        gateway_common::CHECK_IPV4_CHECKSUM | gateway_common::CHECK_MARTIAN_SOURCE
    );
    let text = format!("{base}skip_checks = [\"lengths\", \"ttl\"]\n");
    let i = only(&text, "dataplane.skip_checks");
    assert_eq!(i.line, 3);
    assert!(i.message.contains("unknown check \"ttl\""), "{i:?}");
    assert!(i.message.contains("ipv4_checksum"), "{i:?}");
}

#[test]
fn extra_macs_are_unicast_and_few() {
    let base = "[dataplane]\ninterface = \"eth0\"\n";
    let c = Config::parse(
        &format!("{base}extra_macs = [\"00:00:5e:00:01:07\"]\n"),
        Path::new("t.toml"),
    )
    .unwrap();
    assert_eq!(c.dataplane.extra_macs, vec![[0, 0, 0x5e, 0, 1, 7]]);
    for bad in [
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
        "00:00:5e:00:01",
        "zz:00:5e:00:01:07",
    ] {
        let text = format!("{base}extra_macs = [\"{bad}\"]\n");
        let i = only(&text, "dataplane.extra_macs");
        assert!(i.message.contains("not a unicast MAC"), "{bad}: {i:?}");
    }
    let four = "[\"02:00:00:00:00:01\", \"02:00:00:00:00:02\", \"02:00:00:00:00:03\", \"02:00:00:00:00:04\"]";
    let i = only(
        &format!("{base}extra_macs = {four}\n"),
        "dataplane.extra_macs",
    );
    assert!(i.message.contains("at most 3"), "{i:?}");
}

#[test]
fn the_bgp_example_parses() {
    let c = parse(EXAMPLE_BGP).unwrap();
    let b = c.bgp.unwrap();
    assert_eq!(b.local_as, 65010);
    assert_eq!(b.router_id, std::net::Ipv4Addr::new(198, 18, 0, 2));
    assert_eq!(b.communities, vec![Community::Standard(65010, 1)]);
    assert_eq!(b.announce_after, Duration::from_secs(2));
    assert_eq!(b.withdraw_after, Duration::ZERO);
    assert_eq!(b.neighbors.len(), 1);
    let n = &b.neighbors[0];
    assert_eq!(
        (n.asn, n.hold_time, n.keepalive),
        (65000, Duration::from_secs(9), Duration::from_secs(3))
    );
    assert_eq!(
        c.services[0].communities,
        vec![Community::Standard(65000, 80)]
    );
    assert_eq!(c.services[0].med, Some(10));
    assert!(parse(EXAMPLE).unwrap().bgp.is_none());
}

const BGP: &str = "[dataplane]\ninterface = \"eth0\"\n[bgp]\nlocal_as = 65010\n\
                   router_id = \"198.18.0.2\"\n";
const NEIGHBOR: &str = "[[bgp.neighbor]]\naddress = \"198.18.0.1\"\nas = 65000\n";

#[test]
fn bgp_keys_are_checked() {
    let cases = [
        (
            "local_as = 65010",
            "local_as = 0",
            "bgp.local_as",
            "out of range",
        ),
        (
            "local_as = 65010",
            "local_as = 23456",
            "bgp.local_as",
            "AS_TRANS",
        ),
        (
            "router_id = \"198.18.0.2\"",
            "router_id = \"0.0.0.0\"",
            "bgp.router_id",
            "not a router id",
        ),
        (
            "router_id = \"198.18.0.2\"",
            "router_id = \"fd00::2\"",
            "bgp.router_id",
            "not a router id",
        ),
        (
            "as = 65000",
            "as = 4294967296",
            "bgp.neighbor.as",
            "out of range",
        ),
        (
            "router_id = \"198.18.0.2\"",
            "router_id = \"198.18.0.2\"\nnext_hop_v6 = \"198.18.0.1\"",
            "bgp.next_hop_v6",
            "is not an IPv6 address",
        ),
        (
            "address = \"198.18.0.1\"",
            "address = \"127.0.0.1\"",
            "bgp.neighbor.address",
            "loopback",
        ),
    ];
    for (from, to, field, says) in cases {
        let text = format!("{BGP}{NEIGHBOR}").replace(from, to);
        let i = only(&text, field);
        assert!(i.message.contains(says), "{to}: {i:?}");
    }
    let good = parse(&format!("{BGP}{NEIGHBOR}")).unwrap();
    assert_eq!(good.bgp.unwrap().neighbors[0].asn, 65000);

    let i = only(BGP, "bgp.neighbor");
    assert!(i.message.contains("at least one"), "{i:?}");
    let twice = format!("{BGP}{NEIGHBOR}{NEIGHBOR}");
    let i = only(&twice, "bgp.neighbor.address");
    assert!(
        i.message.contains("already the neighbor at line 7"),
        "{i:?}"
    );
    assert_eq!(i.line, 10);

    let extra = |k: &str| format!("{BGP}{NEIGHBOR}{k}\n");
    for (key, field, says) in [
        (
            "hold_time = \"2s\"",
            "bgp.neighbor.hold_time",
            "out of range",
        ),
        (
            "hold_time = \"9.5s\"",
            "bgp.neighbor.hold_time",
            "whole number of seconds",
        ),
        (
            "hold_time = \"9s\"\nkeepalive = \"9s\"",
            "bgp.neighbor.keepalive",
            "out of range",
        ),
        ("password = \"a b\"", "bgp.neighbor.password", "printable"),
        (
            "password = \"a\\\"b\"",
            "bgp.neighbor.password",
            "printable",
        ),
    ] {
        let i = only(&extra(key), field);
        assert!(i.message.contains(says), "{key}: {i:?}");
    }
    let c = parse(&extra("hold_time = \"30s\"")).unwrap();
    let n = &c.bgp.unwrap().neighbors[0];
    assert_eq!(
        (n.hold_time, n.keepalive),
        (Duration::from_secs(30), Duration::from_secs(10))
    );
}

#[test]
fn communities_parse_and_refuse_the_rest() {
    let ok: [(&str, Community); 3] = [
        ("65000:100", Community::Standard(65000, 100)),
        ("0:0", Community::Standard(0, 0)),
        ("4200000000:1:2", Community::Large(4_200_000_000, 1, 2)),
    ];
    for (text, c) in ok {
        assert_eq!(text.parse::<Community>(), Ok(c));
        assert_eq!(c.to_string(), text);
    }
    for bad in [
        "65536:1",
        "1",
        "1:2:3:4",
        "a:b",
        ":1",
        "1:",
        "-1:2",
        "+1:2",
        "1: 2",
        "99999999999:1:1",
        "",
    ] {
        assert!(bad.parse::<Community>().is_err(), "{bad:?}");
    }
    let text = format!("{BGP}communities = [\"1:2\", \"1:2\"]\n{NEIGHBOR}");
    let i = only(&text, "bgp.communities");
    assert!(i.message.contains("listed twice"), "{i:?}");
}

#[test]
fn route_keys_need_bgp_and_one_med_per_vip() {
    let svc = |name: &str, port: u16, extra: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"198.18.1.1\"\nport = {port}\n\
             protocol = \"tcp\"\nmode = \"l2dsr\"\n{extra}"
        )
    };
    let without = format!(
        "[dataplane]\ninterface = \"eth0\"\n{}",
        svc("a", 80, "med = 5\n")
    );
    let i = only(&without, "med");
    assert!(i.message.contains("needs a [bgp] section"), "{i:?}");
    let without = format!(
        "[dataplane]\ninterface = \"eth0\"\n{}",
        svc("a", 80, "communities = [\"1:1\"]\n")
    );
    let i = only(&without, "communities");
    assert!(i.message.contains("need a [bgp] section"), "{i:?}");

    let two = format!(
        "{BGP}{NEIGHBOR}{}{}",
        svc("a", 80, "med = 5\n"),
        svc("b", 443, "med = 6\n")
    );
    let i = only(&two, "med");
    assert!(i.message.contains("differs from service \"a\""), "{i:?}");
    let agree = format!(
        "{BGP}{NEIGHBOR}{}{}",
        svc("a", 80, "med = 5\n"),
        svc("b", 443, "med = 5\n")
    );
    let c = parse(&agree).unwrap();
    assert_eq!(c.services[1].med, Some(5));
}

// ---------------------------------------------------------------------------------------
// [protection]

#[test]
fn protection_defaults_apply_to_services_and_their_own_keys_override_them() {
    let c = parse(EXAMPLE).unwrap();
    let p = &c.protection;
    assert_eq!(p.flood_new_flows_per_cpu, 10_000);
    assert_eq!(p.sources_size, 65536);
    assert_eq!(
        p.allowlist
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        ["198.18.200.0/24", "fd00:200::/48"]
    );
    let new = Some(Rate {
        per_second: 200,
        burst: 400,
    });
    assert_eq!(p.defaults.mode, ProtectMode::Monitor);
    assert_eq!(p.defaults.new_flows, new);
    assert_eq!(p.defaults.packets, None);
    let web = &c.services[0].protection;
    assert_eq!(web.mode, ProtectMode::Enforce);
    assert_eq!(web.new_flows, new, "inherited with its burst");
    let packets = Some(Rate {
        per_second: 20000,
        burst: 20000,
    });
    assert_eq!(web.packets, packets, "the burst defaults to the rate");
    assert_eq!(c.services[1].protection, p.defaults);
    // Without the section: no limits, the guard at its default.
    let bare = parse("[dataplane]\ninterface = \"eth0\"\n").unwrap();
    assert_eq!(bare.protection, ProtectionConfig::default());
    assert_eq!(bare.protection.defaults.mode, ProtectMode::Off);
}

#[test]
fn bad_protection_keys_are_errors_naming_line_and_key() {
    let base = "[dataplane]\ninterface = \"eth0\"\n[protection]\n";
    let cases: &[(&str, &str, &str)] = &[
        (
            "new_flows_per_second = -1",
            "protection.new_flows_per_second",
            "out of range",
        ),
        (
            "packets_per_second = 100\npackets_burst = 50",
            "protection.packets_burst",
            "below the rate",
        ),
        (
            "new_flows_burst = 10",
            "protection.new_flows_burst",
            "needs protection.new_flows_per_second",
        ),
        ("prefix_v4 = 33", "protection.prefix_v4", "out of range"),
        ("prefix_v6 = 0", "protection.prefix_v6", "out of range"),
        (
            "flood_new_flows_per_cpu = -5",
            "protection.flood_new_flows_per_cpu",
            "out of range",
        ),
        (
            "sources_size = 10",
            "protection.sources_size",
            "out of range",
        ),
        (
            "allowlist = [\"198.18.0.0/33\"]",
            "protection.allowlist",
            "0 to 32",
        ),
        (
            "allowlist = [\"fd00::/129\"]",
            "protection.allowlist",
            "0 to 128",
        ),
        (
            "allowlist = [\"198.18.0.1/24\"]",
            "protection.allowlist",
            "host bits set",
        ),
        (
            "allowlist = [\"nonsense\"]",
            "protection.allowlist",
            "not a prefix",
        ),
        (
            "allowlist = [\"198.18.0.0/16\", \"198.18.3.0/24\"]",
            "protection.allowlist",
            "overlaps 198.18.0.0/16",
        ),
        (
            "allowlist = [\"fd00::/64\", \"fd00::/64\"]",
            "protection.allowlist",
            "listed twice",
        ),
    ];
    for (keys, field, needle) in cases {
        let text = format!("{base}{keys}\n");
        let i = only(&text, field);
        assert!(i.message.contains(needle), "{keys}: {i:?}");
        let want = text.lines().count();
        assert_eq!(i.line, want, "{keys}: the line of the key");
    }
    // A mode that is not one: serde names the key and line.
    let err = parse(&format!("{base}mode = \"block\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("test.toml:4") && err.contains("mode"), "{err}");
}

#[test]
fn a_service_protection_key_is_checked_like_the_defaults() {
    let text = "[dataplane]\ninterface = \"eth0\"\n[[service]]\nname = \"a\"\n\
                vip = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n\
                protection = { mode = \"enforce\", new_flows_per_second = 10, new_flows_burst = 5 }\n";
    let i = only(text, "protection.new_flows_burst");
    assert_eq!(i.service.as_deref(), Some("a"));
    assert_eq!(i.line, 9);
}

#[test]
fn prefixes_contain_what_they_cover_and_nothing_of_the_other_family() {
    let p = |s: &str| {
        let (a, l) = s.split_once('/').unwrap();
        Prefix {
            addr: a.parse().unwrap(),
            len: l.parse().unwrap(),
        }
    };
    assert!(p("198.18.0.0/16").contains(&p("198.18.7.0/24")));
    assert!(!p("198.18.7.0/24").contains(&p("198.18.0.0/16")));
    assert!(!p("198.19.0.0/16").contains(&p("198.18.7.0/24")));
    assert!(p("0.0.0.0/0").contains(&p("198.18.7.0/24")));
    assert!(!p("::/0").contains(&p("198.18.7.0/24")));
    assert!(p("fd00::/8").contains(&p("fd00:1::/32")));
    assert_eq!(
        Prefix::masked("fd00:1:2:3:4::1".parse().unwrap(), 64).to_string(),
        "fd00:1:2:3::"
    );
    assert_eq!(
        Prefix::masked("198.18.7.9".parse().unwrap(), 0).to_string(),
        "0.0.0.0"
    );
}
