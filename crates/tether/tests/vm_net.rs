//! A real guest on a remote NIC (issue 17): a stock Debian Linux 6.1 guest under TCG
//! (QEMU 11.1, vfio-user, q35, its devices hot-plugged by `tether vm`) uses a
//! virtio-net device of an I/O box in another network namespace, whose TAP sits on a
//! Linux bridge of the box with a veth to a "peer" namespace, and at the same time a
//! virtio-blk disk of a second box. Every bridge is its own process; the namespaces
//! are made and removed by the test's rig. One boot for all of it; the guest script
//! runs the steps in order.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use dataplane::netns::Rig;

/// The NIC's MAC in box.toml, which the guest must read.
const MAC: &str = "02:77:00:00:00:01";
/// The peer's address (the guest's is 10.77.0.1/24; NET_GUEST uses both).
const PEER_IP: &str = "10.77.0.2";
/// The bytes of each bulk transfer.
const BULK: usize = 64 << 20;
/// The peer's listening ports: guest -> peer, peer -> guest, and guest -> peer while
/// the disk is in use (NET_GUEST connects to them).
const PORT_TX: u16 = 5001;
const PORT_RX: u16 = 5002;
const PORT_BOTH: u16 = 5003;

/// What the guest runs (busybox sh; `at` prints the guest's uptime for the timed
/// steps):
/// 1. waits for the NIC and the disk, both hot-added (up to 2 minutes), prints the
///    NIC's driver and `ip link`;
/// 2. 10.77.0.1/24 on the NIC, waits for carrier, 100 pings to the peer;
/// 3. 64 MiB of random data to the peer (`nc`, its checksum printed first), then
///    64 MiB from the peer (`nc` reading a FIFO that never ends, so that it does not
///    shut the connection's sending side down before the peer has sent everything);
/// 4. the same 64 MiB to the peer again in the background while rounds of a 4 MiB
///    pattern are written to the disk and read back (O_DIRECT), as long as the
///    transfer runs (at least one round);
/// 5. "ready for kill": waits for the NIC to lose its link or leave (the test kills
///    its box), then for it to leave; the disk still works; "ready for term".
const NET_GUEST: &str = r#"
at() { cut -d' ' -f1 /proc/uptime; }
i=0; nic=""
while [ $i -lt 1200 ]; do
  for n in /sys/class/net/*; do [ -e $n/device ] && nic=${n##*/}; done
  [ -n "$nic" ] && [ -e /sys/block/vda ] && break
  usleep 100000; i=$((i+1))
done
echo "=== devices after $((i/10)) s: nic $nic"
echo "=== nic driver $(basename $(readlink /sys/class/net/$nic/device/driver))"
ip link show $nic
ip addr add 10.77.0.1/24 dev $nic
ip link set $nic up
i=0
while [ "$(cat /sys/class/net/$nic/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
echo "=== carrier $(cat /sys/class/net/$nic/carrier) after $i"
ping -q -c 100 -i 0.1 -W 5 10.77.0.2 | sed 's/^/=== ping /'
dd if=/dev/urandom of=/tmp/tx bs=1M count=64 2>/dev/null
echo "=== tx sum $(sha256sum /tmp/tx | cut -d' ' -f1)"
t0=$(at)
nc 10.77.0.2 5001 < /tmp/tx
rc=$?
echo "=== tx rc=$rc secs $t0 $(at)"
mkfifo /tmp/hold
sleep 100000 > /tmp/hold &
hold=$!
t0=$(at)
nc 10.77.0.2 5002 < /tmp/hold > /tmp/rx
rc=$?
echo "=== rx rc=$rc secs $t0 $(at)"
kill $hold
echo "=== rx bytes $(wc -c < /tmp/rx)"
echo "=== rx sum $(sha256sum /tmp/rx | cut -d' ' -f1)"
rm /tmp/rx
check() {
  dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null
  dd if=/tmp/p of=/dev/vda bs=1M oflag=direct 2>/dev/null
  w=$?
  sync
  echo 3 > /proc/sys/vm/drop_caches
  dd if=/dev/vda of=/tmp/b bs=1M count=4 iflag=direct 2>/dev/null
  if [ $w = 0 ] && cmp -s /tmp/p /tmp/b; then echo "=== disk $1 same"; else echo "=== disk $1 differs"; fi
  echo "=== disk pattern $(sha256sum /tmp/p | cut -d' ' -f1)"
}
t0=$(at)
nc 10.77.0.2 5003 < /tmp/tx &
ncp=$!
r=0
while [ $r -lt 1 ] || kill -0 $ncp 2>/dev/null; do r=$((r+1)); check round; done
d1=$(at)
wait $ncp
echo "=== both rc=$? rounds $r secs $t0 $d1 $(at)"
echo "=== ready for kill"
i=0
while [ -e /sys/class/net/$nic ] && [ "$(cat /sys/class/net/$nic/carrier 2>/dev/null)" = 1 ] && [ $i -lt 1200 ]; do usleep 100000; i=$((i+1)); done
if [ -e /sys/class/net/$nic ]; then echo "=== nic link down after $((i/10)) s"; fi
while [ -e /sys/class/net/$nic ] && [ $i -lt 1200 ]; do usleep 100000; i=$((i+1)); done
[ -e /sys/class/net/$nic ] || echo "=== nic gone after $((i/10)) s"
check after
echo "=== ready for term"
sleep 100000
"#;

/// A process in the peer's namespace (busybox `nc`), killed if the test ends first.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The guest's static busybox, which runs on the host too: the peer's `nc`.
fn busybox() -> PathBuf {
    let vm_dir = std::env::var("TETHER_VM_DIR").unwrap_or("/var/tmp/tether-vm".into());
    PathBuf::from(vm_dir).join("guest/bin/busybox")
}

/// `nc -l -p PORT` in the peer's namespace. `send`: the file it sends (the peer
/// serves the guest), else what it receives goes to `into`, while its standard input
/// stays open (at EOF busybox nc would shut the connection's sending side and the
/// guest's nc would stop).
fn listen(rig: &Rig, peer: usize, port: u16, send: Option<&Path>, into: &Path) -> Peer {
    let mut cmd = rig.command(peer, busybox());
    cmd.args(["nc", "-l", "-p", &port.to_string()])
        .stderr(Stdio::null());
    match send {
        Some(f) => cmd.stdin(File::open(f).unwrap()).stdout(Stdio::null()),
        None => cmd
            .stdin(Stdio::piped())
            .stdout(File::create(into).unwrap()),
    };
    Peer(cmd.spawn().unwrap())
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_string()
}

/// The three uptimes after "secs" on the guest's `key` line, as seconds.
fn secs(text: &str, key: &str) -> Vec<f64> {
    let v = value(text, key);
    let (_, times) = v.split_once("secs ").unwrap_or_else(|| panic!("{v}"));
    times
        .split_whitespace()
        .map(|t| t.parse().unwrap_or_else(|_| panic!("{v}")))
        .collect()
}

/// MB/s (10^6 bytes) of BULK bytes between two uptimes.
fn rate(t: &[f64]) -> f64 {
    BULK as f64 / 1e6 / (t[1] - t[0]).max(0.01)
}

/// Waits (up to `timeout`) for the peer's `nc` to end; its exit must be a success.
fn finished(p: &mut Peer, what: &str, timeout: Duration) {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            assert!(s.success(), "the peer's nc ({what}) ended with {s}");
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "the peer's nc ({what}) did not end within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 17's guest test. The rig: namespaces "net box" (`tether iobox` with a
/// virtio-net device on TAP `vntap`, which the box creates and puts on the box's
/// Linux bridge `vnbr`, with a veth to the "peer" namespace, 10.77.0.2/24), "disk
/// box" (`tether iobox` with a virtio-blk disk), "host" (`tether vm`: the host bridge
/// and QEMU), each joined by veth to a Linux bridge in a "sw" namespace, all in group
/// 10. The guest boots with no device, and `tether vm` hot-adds both:
/// - the stock virtio_net driver binds and `ip link` shows box.toml's MAC;
/// - 100 pings to the peer, 0 % loss;
/// - 64 MiB guest -> peer and 64 MiB peer -> guest, the checksums equal;
/// - 64 MiB guest -> peer again while patterns are written to the disk and read back;
///   the box's file holds the last one;
/// - the net box is killed: the guest sees the NIC leave (pciehp, after the pool
///   hot-removes it), the disk still works, the host bridge answers `tether ctl
///   stats` with the disk as its only device and ends cleanly on SIGTERM.
///
/// Prints the ping RTT and each transfer's MB/s.
#[test]
fn linux_guest_uses_a_remote_nic_and_a_remote_disk() {
    let test = "linux_guest_uses_a_remote_nic_and_a_remote_disk";
    let Some((root, _vm)) = vfio_user_qemu(test) else {
        return;
    };
    let root = root.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some((kernel, initrd)) = guest_image(
        test,
        d,
        NET_GUEST,
        &[],
        &["virtio_pci", "virtio_blk", "virtio_net"],
    ) else {
        return;
    };
    assert!(
        busybox().exists(),
        "{}: the guest's busybox",
        busybox().display()
    );
    let Some(mut rig) = Rig::for_test(test, "tvn") else {
        return;
    };
    let sw = rig.host("sw").unwrap();
    let nb = rig.host("netbox").unwrap();
    let db = rig.host("diskbox").unwrap();
    let hs = rig.host("host").unwrap();
    let peer = rig.host("peer").unwrap();
    for (h, inner, outer) in [
        (nb, "vnn", "swvnn"),
        (db, "vnd", "swvnd"),
        (hs, "vnh", "swvnh"),
    ] {
        rig.veth(h, inner, sw, outer, 1500).unwrap();
    }
    rig.bridge(sw, "br0", &["swvnn", "swvnd", "swvnh"]).unwrap();
    // The box's own LAN: a bridge with the peer on it (the box puts its TAP there).
    rig.veth(nb, "vnp", peer, "vnpeer", 1500).unwrap();
    rig.bridge(nb, "vnbr", &["vnp"]).unwrap();
    run_ok(Command::new("ip").args([
        "-n",
        rig.ns(peer),
        "addr",
        "add",
        &format!("{PEER_IP}/24"),
        "dev",
        "vnpeer",
    ]));

    let path = |p: &Path| p.to_str().unwrap().to_string();
    let socks: Vec<PathBuf> = ["host", "netbox", "diskbox"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    let net_toml = write(
        d,
        "netbox.toml",
        &format!(
            "[port]\ninterface = \"vnn\"\n[bridge]\ncontrol = \"{}\"\n\
             [[device]]\nslot = 0\ngid = 10\nmodel = \"virtio-net\"\nmac = \"{MAC}\"\n\
             tap = \"vntap\"\nbridge = \"vnbr\"\n",
            socks[1].display()
        ),
    );
    let disk_toml = write(
        d,
        "diskbox.toml",
        &format!(
            "[port]\ninterface = \"vnd\"\n[bridge]\ncontrol = \"{}\"\n\
             [[device]]\nslot = 0\ngid = 10\nmodel = \"virtio-blk\"\npath = \"{}\"\n",
            socks[2].display(),
            disk.display()
        ),
    );
    let host_toml = write(
        d,
        "host.toml",
        &format!(
            "gid = 10\n[port]\ninterface = \"vnh\"\n[bridge]\ncontrol = \"{}\"\n",
            socks[0].display()
        ),
    );

    // The peer: a file to send the guest, and three listeners.
    let from_peer = d.join("from-peer.bin");
    run_ok(
        Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "count=64", "status=none"])
            .arg(format!("of={}", from_peer.display())),
    );
    let from_peer_sum = sha256(&from_peer);
    let (got_tx, got_both) = (d.join("tx.bin"), d.join("both.bin"));
    let mut nc_tx = listen(&rig, peer, PORT_TX, None, &got_tx);
    let mut nc_rx = listen(&rig, peer, PORT_RX, Some(&from_peer), Path::new(""));
    let mut nc_both = listen(&rig, peer, PORT_BOTH, None, &got_both);

    let mut netbox = Proc::spawn(
        &rig,
        nb,
        "net box",
        &["iobox", "--config", &path(&net_toml)],
    );
    let mut diskbox = Proc::spawn(
        &rig,
        db,
        "disk box",
        &["iobox", "--config", &path(&disk_toml)],
    );
    netbox.wait_for("slot 0: ", 1, Duration::from_secs(10));
    diskbox.wait_for("slot 0: ", 1, Duration::from_secs(10));
    assert!(
        netbox.text().contains("virtio-net (1af4:1041)"),
        "{}",
        netbox.text()
    );
    let mut vm = Proc::spawn(
        &rig,
        hs,
        "tether vm",
        &[
            "vm",
            "--config",
            &path(&host_toml),
            "--frontend",
            "vfio-user",
            "--accel",
            "tcg",
            "--qemu-root",
            &root,
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 panic=-1",
            "--memory",
            "384",
            "--root-ports",
            "3",
            "--timeout",
            "900",
        ],
    );
    wait_or_dump(
        &mut vm,
        "=== ready for kill",
        1,
        Duration::from_secs(600),
        &socks,
    );
    let text = vm.text();
    eprintln!("{text}");
    assert_eq!(vm.count("tether vm: hot-adding tether-p"), 2, "{text}");

    // The stock driver, the MAC of box.toml.
    assert_eq!(value(&text, "=== nic driver "), "virtio_net", "{text}");
    assert_eq!(
        value(&text, "link/ether ").split(' ').next(),
        Some(MAC),
        "ip link shows box.toml's MAC:\n{text}"
    );
    assert!(value(&text, "=== carrier ").starts_with("1 "), "{text}");

    // 100 pings, none lost.
    let pings = value(&text, "=== ping 100 packets transmitted, ");
    assert!(
        pings.starts_with("100 packets received, 0% packet loss"),
        "{pings}"
    );
    let rtt = value(&text, "=== ping round-trip min/avg/max = ");

    // 64 MiB each way.
    finished(&mut nc_tx, "guest -> peer", Duration::from_secs(10));
    finished(&mut nc_rx, "peer -> guest", Duration::from_secs(10));
    let tx_sum = value(&text, "=== tx sum ").to_string();
    assert_eq!(value(&text, "=== tx rc=").split(' ').next(), Some("0"));
    assert_eq!(std::fs::metadata(&got_tx).unwrap().len(), BULK as u64);
    assert_eq!(sha256(&got_tx), tx_sum, "the peer got what the guest sent");
    assert_eq!(value(&text, "=== rx rc=").split(' ').next(), Some("0"));
    assert_eq!(value(&text, "=== rx bytes "), BULK.to_string());
    assert_eq!(
        value(&text, "=== rx sum "),
        from_peer_sum,
        "the guest got what the peer sent"
    );

    // The NIC and the disk at once.
    finished(&mut nc_both, "with the disk", Duration::from_secs(10));
    assert_eq!(sha256(&got_both), tx_sum, "the peer got it again");
    let both = value(&text, "=== both rc=");
    assert!(both.starts_with("0 "), "{both}");
    let rounds = text.matches("=== disk round ").count();
    assert!(rounds >= 1, "{text}");
    assert_eq!(
        text.matches("=== disk round same").count(),
        rounds,
        "every pattern read back as written:\n{text}"
    );
    let last = text
        .lines()
        .filter_map(|l| l.split_once("=== disk pattern ").map(|(_, v)| v.trim()))
        .next_back()
        .unwrap();
    let prefix = d.join("prefix.bin");
    std::fs::write(&prefix, &std::fs::read(&disk).unwrap()[..4 << 20]).unwrap();
    assert_eq!(
        sha256(&prefix),
        last,
        "the disk box's file holds the last pattern"
    );

    let both_t = secs(&text, "=== both rc=");
    eprintln!(
        "measured (TCG guest, vfio-user, remote NIC over veth, debug build): ping RTT \
         min/avg/max {rtt} (100 pings); 64 MiB guest -> peer {:.1} MB/s, peer -> guest \
         {:.1} MB/s; guest -> peer with the disk in use {:.1} MB/s ({rounds} disk rounds \
         of 4 MiB written and read back meanwhile)",
        rate(&secs(&text, "=== tx rc=")),
        rate(&secs(&text, "=== rx rc=")),
        rate(&[both_t[0], both_t[2]]),
    );
    let counters = run_ok(tether().args(["ctl", "stats", "-s"]).arg(&socks[1]));
    let net: Vec<&str> = counters
        .lines()
        .filter(|l| l.contains("net_") && !l.ends_with(": 0"))
        .collect();
    eprintln!("the net box's counters:\n{}", net.join("\n"));

    // The net box dies: the NIC leaves the guest, the disk stays.
    let killed = std::time::Instant::now();
    drop(netbox);
    vm.wait_for(
        "tether vm: hot-removing tether-p",
        1,
        Duration::from_secs(30),
    );
    wait_or_dump(
        &mut vm,
        "=== ready for term",
        1,
        Duration::from_secs(180),
        &[socks[0].clone(), socks[2].clone()],
    );
    let text = vm.text();
    let after: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("=== ready for kill"))
        .collect();
    eprintln!("{}", after.join("\n"));
    assert!(text.contains("=== nic gone after "), "{text}");
    assert!(text.contains("=== disk after same"), "{text}");
    vm.wait_for("removed by the guest", 1, Duration::from_secs(60));
    let since = |p: &str| {
        vm.seen_at(p)
            .map(|t| format!("{:.1} s", t.saturating_duration_since(killed).as_secs_f64()))
            .unwrap_or_else(|| "never".into())
    };
    eprintln!(
        "measured (TCG guest, vfio-user, q35 pciehp): from the net box's death to the host \
         bridge's hot-removal {}, the guest's link down {}, the NIC gone from the guest {}",
        since("tether vm: hot-removing tether-p"),
        since("=== nic link down"),
        since("=== nic gone after "),
    );
    // The host bridge still answers, with the disk as its only device.
    let out = run_ok(
        tether()
            .args(["ctl", "stats", "--json", "-s"])
            .arg(&socks[0]),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["switch"]["in_use"].as_u64(), Some(1), "{out}");
    assert_eq!(v["devices"].as_array().map(|d| d.len()), Some(1), "{out}");
    // SIGTERM: QEMU is stopped, the bridge prints its counters and exits.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    vm.wait_for("tether host: stopped", 1, Duration::from_secs(20));
    let status = vm.child.wait().unwrap();
    let text = vm.text();
    let stopped = text
        .lines()
        .find(|l| l.contains("tether host: stopped"))
        .unwrap();
    assert_eq!(counter(stopped, "hot-added,"), 2, "{stopped}");
    assert_eq!(counter(stopped, "hot-removed,"), 1, "{stopped}");
    assert_eq!(counter(stopped, "VMM errors;"), 0, "{stopped}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        status.code().is_some(),
        "tether vm ended by a signal: {status}\n{text}"
    );
    drop(diskbox.stop());
}
