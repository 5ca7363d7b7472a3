use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixListener,
    path::Path,
    process::Command,
};

use super::{bird::*, *};
use crate::testing::FakeBird;

const CONFIG: &str = "[dataplane]\ninterface = \"eth0\"\nipip_source_v6 = \"fd00::2\"\n\
    [bgp]\nlocal_as = 65010\nrouter_id = \"198.18.0.2\"\ncommunities = [\"65010:1\"]\n\
    next_hop_v6 = \"fd00::2\"\n\
    [[bgp.neighbor]]\naddress = \"198.18.0.1\"\nas = 65000\npassword = \"s3cret\"\n\
    [[bgp.neighbor]]\naddress = \"fd00::1\"\nas = 65010\nhold_time = \"3s\"\n\
    [[service]]\nname = \"web\"\nvip = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\n\
    mode = \"l2dsr\"\ncommunities = [\"65000:80\", \"65010:1\"]\nmed = 7\n\
    [[service]]\nname = \"tls\"\nvip = \"198.18.1.1\"\nport = 443\nprotocol = \"tcp\"\n\
    mode = \"l2dsr\"\ncommunities = [\"65000:443\", \"1:2:3\"]\nmed = 7\n\
    [[service]]\nname = \"dns6\"\nvip = \"fd00:1::1\"\nport = 53\nprotocol = \"udp\"\n\
    mode = \"ipip\"\n";

fn config() -> Config {
    Config::parse(CONFIG, Path::new("t.toml")).unwrap()
}

#[test]
fn a_vip_route_merges_its_services_communities() {
    let r = routes(&config());
    let vips: Vec<IpAddr> = r.keys().copied().collect();
    assert_eq!(
        vips,
        [
            "198.18.1.1".parse::<IpAddr>().unwrap(),
            "fd00:1::1".parse().unwrap()
        ]
    );
    let web = &r[&vips[0]];
    assert_eq!(
        web.communities,
        vec![
            Community::Standard(65010, 1),
            Community::Standard(65000, 80),
            Community::Standard(65000, 443),
            Community::Large(1, 2, 3),
        ]
    );
    assert_eq!(web.med, Some(7));
    assert_eq!(r[&vips[1]].communities, vec![Community::Standard(65010, 1)]);
    assert_eq!(r[&vips[1]].med, None);
    let without = Config::parse("[dataplane]\ninterface = \"eth0\"\n", Path::new("t")).unwrap();
    assert!(routes(&without).is_empty());
}

#[test]
fn snat_addresses_are_routes_unless_turned_off() {
    let with = CONFIG.replace(
        "ipip_source_v6 = \"fd00::2\"\n",
        "ipip_source_v6 = \"fd00::2\"\nsnat_v4 = [\"198.18.0.100\", \"198.18.0.101\"]\n\
         snat_v6 = [\"fd00::100\"]\n",
    );
    let c = Config::parse(&with, Path::new("t.toml")).unwrap();
    let r = routes(&c);
    let snat: Vec<IpAddr> = r.values().filter(|r| r.snat).map(|r| r.vip).collect();
    let want: Vec<IpAddr> = ["198.18.0.100", "198.18.0.101", "fd00::100"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(snat, want);
    let one = &r[&want[0]];
    assert_eq!(one.communities, vec![Community::Standard(65010, 1)]);
    assert_eq!(one.med, None);
    assert_eq!(
        r.values().filter(|r| !r.snat).count(),
        2,
        "the VIPs are still there"
    );
    let conf = vips_conf(r.values());
    assert!(conf.contains("route 198.18.0.100/32 blackhole"), "{conf}");
    assert!(conf.contains("route fd00::100/128 blackhole"), "{conf}");

    let off = with.replace("[bgp]\n", "[bgp]\nannounce_snat = false\n");
    let c = Config::parse(&off, Path::new("t.toml")).unwrap();
    assert!(routes(&c).values().all(|r| !r.snat));
    assert_eq!(routes(&c).len(), 2);
}

#[test]
fn the_written_files_say_what_was_configured() {
    let c = config();
    let bgp = c.bgp.as_ref().unwrap();
    let paths = Paths::new(bgp, "eth0");
    assert_eq!(paths.conf, Path::new("/run/gateway/bird-eth0/bird.conf"));
    assert_eq!(paths.socket, Path::new("/run/gateway/bird-eth0/bird.ctl"));
    let conf = bird_conf(bgp, &paths);
    for want in [
        "router id 198.18.0.2;",
        "include \"/run/gateway/bird-eth0/vips.conf\";",
        "neighbor 198.18.0.1 as 65000;",
        "password \"s3cret\";",
        "hold time 9;",
        "keepalive time 3;",
        "neighbor fd00::1 as 65010;",
        "hold time 3;",
        "keepalive time 1;",
        "ipv4 { import none; export where proto = \"gateway_vips4\"; next hop self; };",
        "ipv6 { import none; export where proto = \"gateway_vips6\"; next hop address fd00::2; };",
    ] {
        assert!(conf.contains(want), "{want:?} in:\n{conf}");
    }
    // The IPv6 session has no IPv4 next hop to announce with, so no IPv4 channel.
    let v6_session = &conf[conf.find("neighbor fd00::1").unwrap()..];
    assert!(!v6_session.contains("ipv4 {"), "{conf}");

    let r = routes(&c);
    let vips = vips_conf(r.values());
    assert!(
        vips.contains(
            "route 198.18.1.1/32 blackhole { bgp_community.add((65010,1)); \
             bgp_community.add((65000,80)); bgp_community.add((65000,443)); \
             bgp_large_community.add((1,2,3)); bgp_med = 7; };"
        ),
        "{vips}"
    );
    assert!(
        vips.contains("route fd00:1::1/128 blackhole { bgp_community.add((65010,1)); };"),
        "{vips}"
    );
    assert_eq!(announced_in(&vips), r.keys().copied().collect::<Vec<_>>());
    assert!(announced_in(&vips_conf([])).is_empty());
}

/// BIRD itself parses what is written (`bird -p`): a change of BIRD's grammar, or a value
/// the writer quotes wrongly, fails here rather than on a router.
#[test]
fn bird_accepts_the_written_files() {
    let Some(bird) = crate::sys::find_program("bird") else {
        eprintln!("skipped: BIRD 2 (`bird`) is not installed; `cargo xtask setup` installs bird2");
        return;
    };
    let dir = tempdir("bird-parse");
    let c = config();
    let mut bgp = c.bgp.clone().unwrap();
    bgp.bird_dir = Some(dir.clone());
    let paths = Paths::new(&bgp, "eth0");
    let r = routes(&c);
    let parse = || {
        Command::new(&bird)
            .arg("-p")
            .arg("-c")
            .arg(&paths.conf)
            .output()
            .unwrap()
    };
    for announced in [r.values().collect::<Vec<_>>(), vec![]] {
        write_atomically(&paths.conf, &bird_conf(&bgp, &paths)).unwrap();
        write_atomically(&paths.vips, &vips_conf(announced)).unwrap();
        let out = parse();
        assert!(
            out.status.success(),
            "bird -p: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&paths.conf).unwrap(),
            std::fs::read_to_string(&paths.vips).unwrap()
        );
    }
    // And refuses a broken one, so the check above can fail.
    std::fs::write(
        &paths.vips,
        "protocol static x { ipv4; route 1.2.3.4/33 blackhole; }\n",
    )
    .unwrap();
    assert!(!parse().status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gateway-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn vip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_vip_is_announced_after_holding_servable_and_a_flap_does_not_announce_it() {
    let c = config();
    let bgp = c.bgp.unwrap(); // announce_after 2s, withdraw_after 0
    let t0 = Instant::now();
    let mut a = Announcer::new(&bgp, &[], t0);
    let v = vip("198.18.1.1");
    let mut s = BTreeMap::from([(v, Ok(()))]);
    assert!(!a.update(&s, t0));
    assert_eq!(a.next_deadline(), Some(t0 + Duration::from_secs(2)));
    // Down after 1 s, up again: the hold starts over.
    s.insert(v, Err(Unservable::NoBackend));
    assert!(!a.update(&s, t0 + Duration::from_secs(1)));
    assert_eq!(a.next_deadline(), None);
    s.insert(v, Ok(()));
    assert!(!a.update(&s, t0 + Duration::from_millis(1500)));
    assert!(!a.update(&s, t0 + Duration::from_millis(3000)));
    assert_eq!(a.announced().count(), 0);
    assert!(a.update(&s, t0 + Duration::from_millis(3500)));
    assert_eq!(a.announced().collect::<Vec<_>>(), [v]);
    // Nothing more to do while it stays servable.
    assert!(!a.update(&s, t0 + Duration::from_secs(60)));
    assert_eq!(a.next_deadline(), None);
    // withdraw_after 0: withdrawn at once.
    s.insert(v, Err(Unservable::NotSynced));
    assert!(a.update(&s, t0 + Duration::from_secs(61)));
    assert_eq!(a.announced().count(), 0);
    assert_eq!(a.states()[&v].servable, Err(Unservable::NotSynced));
}

#[test]
fn withdraw_after_holds_a_route_through_a_short_outage() {
    let mut bgp = config().bgp.unwrap();
    bgp.withdraw_after = Duration::from_secs(1);
    let t0 = Instant::now();
    let v = vip("fd00:1::1");
    // Announced already (a restarted agent): not delayed by announce_after.
    let mut a = Announcer::new(&bgp, &[v], t0);
    let mut s = BTreeMap::from([(v, Ok(()))]);
    assert!(!a.update(&s, t0));
    assert_eq!(a.announced().collect::<Vec<_>>(), [v]);
    s.insert(v, Err(Unservable::NoBackend));
    assert!(!a.update(&s, t0 + Duration::from_millis(100)));
    assert_eq!(a.next_deadline(), Some(t0 + Duration::from_millis(1100)));
    s.insert(v, Ok(()));
    assert!(!a.update(&s, t0 + Duration::from_millis(900)));
    s.insert(v, Err(Unservable::NoBackend));
    assert!(!a.update(&s, t0 + Duration::from_millis(1000)));
    assert!(a.update(&s, t0 + Duration::from_millis(2000)));
    // A VIP whose services are gone is withdrawn at once.
    let mut a = Announcer::new(&bgp, &[v], t0);
    assert!(a.update(&BTreeMap::new(), t0));
    assert_eq!(a.announced().count(), 0);
}

#[test]
fn replies_are_read_line_by_line() {
    let text = "0002-Reading configuration from /x/bird.conf\n\
                0003 Reconfigured\n";
    let r = read_reply(&mut text.as_bytes()).unwrap().unwrap();
    assert_eq!(r.code, 3);
    assert_eq!(
        r.lines,
        ["Reading configuration from /x/bird.conf", "Reconfigured"]
    );
    let text = "1002-gateway_vips4 Static master4 up 2026-12-03\n second line\n0000 \n";
    let r = read_reply(&mut text.as_bytes()).unwrap().unwrap();
    assert_eq!((r.code, r.lines.len()), (0, 3));
    assert!(
        read_reply(&mut "0002-only a start\n".as_bytes())
            .unwrap()
            .is_none()
    );
    for bad in ["hello\n", "12345 x\n", "0003x\n", "000é x\n", "0003\n"] {
        assert!(
            matches!(read_reply(&mut bad.as_bytes()), Err(BirdError::Garbled(_))),
            "{bad:?}"
        );
    }
}

/// Random bytes, and mutated good replies, give a reply or an error: never a panic.
#[test]
fn random_replies_never_panic() {
    let mut x = 0x6269_7264_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let good = "0001 BIRD 2.0.12 ready.\n0002-Reading configuration\n 9001 x\n0003 Reconfigured\n";
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut b = good.as_bytes().to_vec();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % b.len();
            match next() % 3 {
                0 => b[i] = next() as u8,
                1 => {
                    b.remove(i);
                }
                _ => b.insert(i, [b'\n', b' ', b'-', b'0', 0xc3][(next() % 5) as usize]),
            }
            if b.is_empty() {
                break;
            }
        }
        let mut r = &b[..];
        loop {
            match read_reply(&mut r) {
                Ok(Some(_)) => ok += 1,
                Ok(None) => break,
                Err(_) => {
                    err += 1;
                    break;
                }
            }
        }
    }
    assert!(ok > 1000 && err > 1000, "ok {ok}, err {err}");
}

/// `command` against a stand-in for BIRD on a Unix socket: greeting, command, reply.
#[test]
fn a_command_gets_its_reply_and_an_error_code_is_an_error() {
    let dir = tempdir("bird-socket");
    let path = dir.join("bird.ctl");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for answer in ["0003 Reconfigured\n", "9001 syntax error\n"] {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"0001 BIRD 2.0.12 ready.\n").unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            seen.push(line);
            w.write_all(answer.as_bytes()).unwrap();
        }
        seen
    });
    let t = Duration::from_secs(5);
    let r = command(&path, "configure", t).unwrap();
    assert_eq!((r.code, r.lines[0].as_str()), (3, "Reconfigured"));
    let e = command(&path, "configure soft", t).unwrap_err();
    assert!(
        matches!(&e, BirdError::Refused { code: 9001, message, .. } if message == "syntax error"),
        "{e:?}"
    );
    assert_eq!(server.join().unwrap(), ["configure\n", "configure soft\n"]);
    let e = command(&dir.join("absent.ctl"), "configure", t).unwrap_err();
    assert!(matches!(e, BirdError::Connect { .. }), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_speaker_tells_bird_only_what_changed_and_retries_when_bird_is_back() {
    let dir = tempdir("speaker");
    let text = CONFIG.replace(
        "[bgp]\n",
        &format!(
            "[bgp]\nbird_dir = \"{}\"\nannounce_after = \"0s\"\n",
            dir.display()
        ),
    );
    let c = Config::parse(&text, Path::new("t.toml")).unwrap();
    let bgp = c.bgp.clone().unwrap();
    let (web, dns) = (vip("198.18.1.1"), vip("fd00:1::1"));
    let t0 = Instant::now();
    let mut sp = Speaker::new(&c, t0).unwrap();
    let bird = FakeBird::start(&sp.paths.socket);
    let mut s = BTreeMap::from([(web, Ok(())), (dns, Err(Unservable::NoBackend))]);

    assert_eq!(sp.update(&bgp, &s, t0).unwrap(), Some(vec![web]));
    assert_eq!(bird.count(), 1);
    let vips = std::fs::read_to_string(&sp.paths.vips).unwrap();
    assert_eq!(announced_in(&vips), [web]);
    assert!(
        std::fs::read_to_string(&sp.paths.conf)
            .unwrap()
            .contains("router id 198.18.0.2;")
    );
    // Nothing new: BIRD is not asked again.
    assert_eq!(sp.update(&bgp, &s, t0).unwrap(), None);
    assert_eq!(bird.count(), 1);
    // The heartbeat asks BIRD how it is, and notices a file rewritten behind its back (the
    // guard's withdrawal while the agent hung): the routes are told again.
    sp.heartbeat().unwrap();
    assert!(sp.in_step());
    write_atomically(&sp.paths.vips, &vips_conf([])).unwrap();
    sp.heartbeat().unwrap();
    assert!(!sp.in_step());
    assert_eq!(sp.update(&bgp, &s, t0).unwrap(), Some(vec![web]));
    assert_eq!(
        announced_in(&std::fs::read_to_string(&sp.paths.vips).unwrap()),
        [web]
    );
    assert_eq!(bird.count(), 2);

    // BIRD gone: an error, counted; the change is told once it is back.
    drop(bird);
    s.insert(dns, Ok(()));
    let e = sp.update(&bgp, &s, t0).unwrap_err();
    assert!(
        matches!(e, SpeakerError::Bird(BirdError::Connect { .. })),
        "{e:?}"
    );
    assert_eq!(sp.errors, 1);
    assert!(
        sp.last_error.as_deref().unwrap().contains("bird.ctl"),
        "{:?}",
        sp.last_error
    );
    let bird = FakeBird::start(&sp.paths.socket);
    assert_eq!(sp.update(&bgp, &s, t0).unwrap(), Some(vec![web, dns]));
    assert_eq!((bird.count(), sp.last_error.as_ref()), (1, None));

    // A restarted agent finds both announced and tells BIRD the same files.
    let mut again = Speaker::new(&c, t0).unwrap();
    assert_eq!(again.announcer.announced().collect::<Vec<_>>(), [web, dns]);
    let before = std::fs::read_to_string(&sp.paths.vips).unwrap();
    assert_eq!(again.update(&bgp, &s, t0).unwrap(), Some(vec![web, dns]));
    assert_eq!(std::fs::read_to_string(&sp.paths.vips).unwrap(), before);
    drop(bird);
    std::fs::remove_dir_all(&dir).unwrap();
}
