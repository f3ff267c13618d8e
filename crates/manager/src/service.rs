//! `tether manager`: the station on the segment in a thread of its own, and the
//! HTTP JSON API in front of it (docs/manager-openapi.json).
//!
//! The station thread owns the socket and the [`fabric::Manager`]; the API's
//! handlers ask it for the inventory and for moves over a bounded channel and wait
//! for its answer, so no lock is shared and the station is never held by a client.
//! A move is followed as `tether ctl set-group` follows one: SET_GROUP in the
//! device's group, again every [`RESEND`](crate::station::RESEND), until the box
//! answers or the move's time runs out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wire::CtrlStatus;

use crate::inventory::{self, Bridge, Device};
use crate::station::{Located, PendingMove, Station};
use crate::Error;

/// Moves in flight at once; more are answered 503.
pub const MAX_PENDING_MOVES: usize = 64;
/// Requests waiting for the station at once; more are answered 503.
pub const MAX_QUEUED: usize = 256;
/// HTTP connections open at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// The group of free devices (`DELETE .../group`).
pub const FREE_GROUP: u16 = 4093;

/// What `tether manager` is started with.
pub struct ServiceConfig {
    /// The interface on the segment (every VLAN of it; not one with AF_XDP on it).
    pub interface: String,
    pub listen: SocketAddr,
    /// What an `Authorization: Bearer` header must carry.
    pub token: String,
    pub keys: fabric::GroupKeys,
    pub signer: Option<fabric::keys::ManagerSigner>,
    /// A bridge not heard from for this long is forgotten.
    pub stale: Duration,
    /// How long a move may wait for its box's answer.
    pub move_timeout: Duration,
}

/// How a move ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    Moved {
        from: u16,
        device: Located,
    },
    /// It was in that group already: nothing sent.
    Already {
        device: Located,
    },
    /// No box on the segment announces it.
    NoSuchDevice,
    /// The box answered, and not OK.
    Refused(CtrlStatus),
    /// The box did not answer in time (a box with `[bridge] managers` ignores
    /// unsigned requests).
    NoAnswer {
        device: Located,
    },
    /// Too many moves in flight.
    Busy,
    /// The request could not be made (a device the inventory has in a group that
    /// is not valid, as a hostile INFO could claim): logged, nothing sent.
    NotSent,
}

/// A request to the station thread.
pub enum Command {
    Devices(oneshot::Sender<Vec<Device>>),
    Bridges(oneshot::Sender<Vec<Bridge>>),
    Move {
        box_id: u64,
        slot: u8,
        to: u16,
        reply: oneshot::Sender<MoveOutcome>,
    },
}

struct InFlight {
    mv: PendingMove,
    reply: oneshot::Sender<MoveOutcome>,
}

/// The station's loop: serve commands, follow moves, forget silent bridges, until
/// `stop`.
pub fn run_station(
    mut st: Station,
    commands: mpsc::Receiver<Command>,
    stop: &AtomicBool,
    stale: Duration,
    move_timeout: Duration,
) -> Result<(), Error> {
    let mut moves: Vec<InFlight> = Vec::new();
    let mut expired = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        st.pump(Duration::from_millis(2))?;
        let now = Instant::now();
        if now.duration_since(expired) >= Duration::from_millis(100) {
            st.m.expire(st.now().saturating_sub(stale.as_micros() as u64));
            expired = now;
        }
        while let Ok(c) = commands.try_recv() {
            match c {
                Command::Devices(r) => {
                    let _ = r.send(inventory::devices(st.m.bridges()));
                }
                Command::Bridges(r) => {
                    let _ = r.send(inventory::bridges(st.m.bridges(), st.now()));
                }
                Command::Move {
                    box_id,
                    slot,
                    to,
                    reply,
                } => {
                    let Some((gid, box_mac, id)) = st.m.find_device(box_id, slot) else {
                        let _ = reply.send(MoveOutcome::NoSuchDevice);
                        continue;
                    };
                    let device = Located {
                        gid,
                        box_mac,
                        box_id: id,
                        slot,
                    };
                    if gid == to {
                        let _ = reply.send(MoveOutcome::Already { device });
                    } else if moves.len() >= MAX_PENDING_MOVES {
                        let _ = reply.send(MoveOutcome::Busy);
                    } else {
                        moves.push(InFlight {
                            mv: PendingMove::new(device, to, now + move_timeout),
                            reply,
                        });
                    }
                }
            }
        }
        let mut i = 0;
        while i < moves.len() {
            let f = &mut moves[i];
            let outcome = match st.poll_result(&f.mv) {
                Some(CtrlStatus::Ok) => Some(MoveOutcome::Moved {
                    from: f.mv.device.gid,
                    device: f.mv.device,
                }),
                Some(s) => Some(MoveOutcome::Refused(s)),
                None if now >= f.mv.deadline => Some(MoveOutcome::NoAnswer {
                    device: f.mv.device,
                }),
                None => match f.mv.poll_resend(&mut st, now) {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(target: "tether::manager", "a move not sent: {e}");
                        Some(MoveOutcome::NotSent)
                    }
                },
            };
            match outcome {
                Some(o) => {
                    let f = moves.swap_remove(i);
                    log_move(&f.mv, o);
                    let _ = f.reply.send(o);
                }
                None => i += 1,
            }
        }
        st.forget_events();
    }
    Ok(())
}

fn log_move(mv: &PendingMove, o: MoveOutcome) {
    let d = mv.device;
    let name = format!("{:#x}/{}", d.box_id, d.slot);
    match o {
        MoveOutcome::Moved { from, .. } => tracing::info!(
            target: "tether::manager",
            "moved {name} (box {}) from group {from} to group {}",
            d.box_mac,
            mv.to
        ),
        MoveOutcome::Refused(s) => tracing::warn!(
            target: "tether::manager",
            "box {} refused to move {name} to group {}: {s:?}",
            d.box_mac,
            mv.to
        ),
        MoveOutcome::NoAnswer { .. } => tracing::warn!(
            target: "tether::manager",
            "box {} did not answer the move of {name} to group {}",
            d.box_mac,
            mv.to
        ),
        _ => {}
    }
}

/// Runs the manager until SIGINT or SIGTERM: the station thread and the API on
/// `cfg.listen`. `listening` is told the address once it is bound.
pub fn serve(cfg: ServiceConfig, listening: impl FnOnce(SocketAddr)) -> Result<(), Error> {
    let st = Station::open(&cfg.interface, cfg.keys, cfg.signer)?;
    let (tx, rx) = mpsc::sync_channel(MAX_QUEUED);
    let stop = Arc::new(AtomicBool::new(false));
    // The API stops with the station: a station that fails (its port) ends the run.
    let (ended_tx, ended_rx) = oneshot::channel::<()>();
    let station = {
        let stop = stop.clone();
        let (stale, timeout) = (cfg.stale, cfg.move_timeout);
        std::thread::Builder::new()
            .name("station".into())
            .spawn(move || {
                let r = run_station(st, rx, &stop, stale, timeout);
                let _ = ended_tx.send(());
                r
            })
            .map_err(|e| Error::Port(format!("starting the station thread: {e}")))?
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Http(format!("starting the runtime: {e}")))?;
    let api = crate::api::Api::new(tx, cfg.token, cfg.move_timeout);
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::Http(format!("listening on {}: {e}", cfg.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Http(e.to_string()))?;
        listening(addr);
        crate::api::serve(listener, api, async move {
            tokio::select! {
                _ = shutdown() => {}
                _ = ended_rx => {}
            }
        })
        .await
    });
    stop.store(true, Ordering::Relaxed);
    let ended = station
        .join()
        .map_err(|_| Error::Port("the station thread panicked".into()))?;
    served.and(ended)
}

/// SIGINT or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
