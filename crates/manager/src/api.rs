//! The HTTP JSON API (docs/manager-openapi.json), on axum:
//!
//! - `GET /devices`, `GET /bridges`: the inventory;
//! - `PUT /devices/{box}/{slot}/group` with `{"gid": N}`: move a device;
//! - `DELETE /devices/{box}/{slot}/group`: back to the free group 4093.
//!
//! Every request needs `Authorization: Bearer TOKEN` (401 otherwise, compared in
//! constant time). Errors are `{"error": "..."}` with the status that says what
//! happened: 400 bad input, 404 no such device, 409 the box refused, 503 too many
//! requests, 504 the box did not answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::service::{Command, MoveOutcome, FREE_GROUP, MAX_CONNECTIONS};
use crate::station::{parse_box, Located};
use crate::Error;

/// Largest request body taken (a `{"gid": N}` is a few bytes).
const MAX_BODY: usize = 4096;

/// What every handler shares: the way to the station and the token.
#[derive(Clone)]
pub struct Api {
    station: mpsc::SyncSender<Command>,
    token: Arc<String>,
    move_timeout: Duration,
}

impl Api {
    pub fn new(station: mpsc::SyncSender<Command>, token: String, move_timeout: Duration) -> Api {
        Api {
            station,
            token: Arc::new(token),
            move_timeout,
        }
    }

    /// Sends `make(reply)` to the station and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Fail> {
        let (tx, rx) = oneshot::channel();
        self.station.try_send(make(tx)).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => Fail(StatusCode::SERVICE_UNAVAILABLE, "busy".into()),
            mpsc::TrySendError::Disconnected(_) => Fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the station stopped".into(),
            ),
        })?;
        match tokio::time::timeout(self.move_timeout + Duration::from_secs(2), rx).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(Fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no answer from the station".into(),
            )),
        }
    }
}

/// An error answer: a status and what went wrong, as `{"error": ...}`.
#[derive(Debug)]
pub struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// The routes, behind the token check.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/devices", get(devices))
        .route("/bridges", get(bridges))
        .route(
            "/devices/{box}/{slot}/group",
            axum::routing::put(put_group).delete(delete_group),
        )
        .fallback(|| async { Fail(StatusCode::NOT_FOUND, "no such resource".into()) })
        .layer(middleware::from_fn_with_state(api.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// Equal in constant time for equal lengths (the token's length is no secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|t| same(t.as_bytes(), api.token.as_bytes())) {
        return next.run(req).await;
    }
    tracing::debug!(target: "tether::manager", "refused a request without the token");
    let mut r = Fail(
        StatusCode::UNAUTHORIZED,
        "a bearer token is needed (Authorization: Bearer TOKEN)".into(),
    )
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn devices(State(api): State<Api>) -> Result<Response, Fail> {
    Ok(Json(api.ask(Command::Devices).await?).into_response())
}

async fn bridges(State(api): State<Api>) -> Result<Response, Fail> {
    Ok(Json(api.ask(Command::Bridges).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    gid: u16,
}

/// BOX and SLOT of the path.
fn device(b: &str, slot: &str) -> Result<(u64, u8), Fail> {
    let bad = |why: String| Fail(StatusCode::BAD_REQUEST, why);
    let id = parse_box(b).ok_or_else(|| {
        bad(format!(
            "box {b:?}: a bridge id (0xb0c5, 45253) or a MAC (02:00:00:00:00:01)"
        ))
    })?;
    let slot = slot
        .parse::<u8>()
        .ok()
        .filter(|s| *s < 32)
        .ok_or_else(|| bad(format!("slot {slot:?}: 0..=31")))?;
    Ok((id, slot))
}

async fn put_group(
    State(api): State<Api>,
    Path((b, slot)): Path<(String, String)>,
    body: Result<Json<GroupBody>, JsonRejection>,
) -> Result<Response, Fail> {
    let (id, slot) = device(&b, &slot)?;
    let Json(body) = body.map_err(|e| {
        Fail(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"gid\": N}}: {}", e.body_text()),
        )
    })?;
    if !wire::valid_gid(body.gid) {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            format!("group {} is not a valid GID (1..=4094)", body.gid),
        ));
    }
    move_to(&api, id, slot, body.gid).await
}

async fn delete_group(
    State(api): State<Api>,
    Path((b, slot)): Path<(String, String)>,
) -> Result<Response, Fail> {
    let (id, slot) = device(&b, &slot)?;
    move_to(&api, id, slot, FREE_GROUP).await
}

fn moved(d: Located, from: u16, to: u16) -> Response {
    Json(serde_json::json!({
        "box": format!("{:#x}", d.box_id),
        "box_mac": d.box_mac.to_string(),
        "slot": d.slot,
        "from": from,
        "gid": to,
    }))
    .into_response()
}

async fn move_to(api: &Api, box_id: u64, slot: u8, to: u16) -> Result<Response, Fail> {
    let outcome = api
        .ask(|reply| Command::Move {
            box_id,
            slot,
            to,
            reply,
        })
        .await?;
    match outcome {
        MoveOutcome::Moved { from, device } => Ok(moved(device, from, to)),
        MoveOutcome::Already { device } => Ok(moved(device, to, to)),
        MoveOutcome::NoSuchDevice => Err(Fail(
            StatusCode::NOT_FOUND,
            format!("no box on the segment announces {box_id:#x}/{slot}"),
        )),
        MoveOutcome::Refused(s) => Err(Fail(
            StatusCode::CONFLICT,
            format!("the box refused: {s:?}"),
        )),
        MoveOutcome::NoAnswer { device } => Err(Fail(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "box {} did not answer (a box with [bridge] managers obeys only requests \
                 signed with one of their keys: --sign)",
                device.box_mac
            ),
        )),
        MoveOutcome::Busy => Err(Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many moves in flight".into(),
        )),
        MoveOutcome::NotSent => Err(Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request could not be made (the manager's log says why)".into(),
        )),
    }
}

/// A listener that holds at most [`MAX_CONNECTIONS`] connections open: the next
/// waits to be accepted until one closes.
struct Limited {
    inner: tokio::net::TcpListener,
    slots: Arc<Semaphore>,
}

/// A connection and its place among the open ones.
struct Counted {
    io: tokio::net::TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl axum::serve::Listener for Limited {
    type Io = Counted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Counted, std::net::SocketAddr) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => return (Counted { io, _slot: slot }, addr),
                // Out of descriptors and the like: wait, as axum's own listener does.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let limited = Limited {
        inner: listener,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    axum::serve(limited, router(api))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Http(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcd", b"abcd"));
        assert!(!same(b"abcd", b"abce"));
        assert!(!same(b"abcd", b"abc"));
        assert!(!same(b"", b"a"));
    }
}
