//! Whatever a peer (or an attacker on the segment) sends, a session neither panics nor
//! loops in `poll_transmit`, its frames stay within the MTU, and it never claims to have
//! sent more TLPs than it was given.

use efe::{Config, Session};
use proptest::prelude::*;
use wire::{FrameKind, TetherHeader};

fn kind() -> impl Strategy<Value = FrameKind> {
    proptest::sample::select(FrameKind::ALL.to_vec())
}

fn frame() -> impl Strategy<Value = (TetherHeader, Vec<u8>, u64)> {
    (
        kind(),
        any::<u8>(),
        prop_oneof![Just(0u32), Just(7), Just(8), any::<u32>()],
        prop_oneof![Just(0u32), Just(5), any::<u32>()],
        prop_oneof![0u32..8, any::<u32>()],
        prop_oneof![0u32..8, any::<u32>()],
        any::<[u32; 2]>(),
        any::<u16>(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            Just(vec![0, 4, 1, 0, 1, 2, 3, 4])
        ],
        0u64..1000,
    )
        .prop_map(
            |(kind, flags, epoch, peer_epoch, seq, ack, ts, window, payload, dt)| {
                (
                    TetherHeader {
                        kind,
                        flags,
                        epoch,
                        peer_epoch,
                        seq,
                        ack,
                        tsval: ts[0],
                        tsecr: ts[1],
                        window,
                        echo_wait: (ts[0] >> 24) as u8,
                    },
                    payload,
                    dt,
                )
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_frames_never_break_a_session(frames in proptest::collection::vec(frame(), 1..40), sends in 0usize..50) {
        let mut s = Session::new(Config { window: 8, recv_queue: 16, max_tlps_per_frame: 4, ..Config::default() }, 5).unwrap();
        for i in 0..sends {
            let _ = s.send(&[i as u8; 12]);
        }
        let mut now = 0u64;
        for (h, payload, dt) in frames {
            now += dt;
            let _ = s.handle_frame(now, &h, &payload);
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            let mut n = 0;
            while let Some(t) = s.poll_transmit(now) {
                prop_assert!(t.payload.len() <= s.config().max_payload());
                n += 1;
                prop_assert!(n <= 64, "poll_transmit does not stop");
            }
            while let Some(tlp) = s.recv() {
                prop_assert!(!tlp.is_empty());
            }
            while s.poll_event().is_some() {}
        }
        let st = s.stats();
        prop_assert!(st.tlps_out as usize <= sends);
    }
}
