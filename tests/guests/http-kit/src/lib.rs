//! A `wasi:http` handler for the gateway's tests, by path:
//! - `/kit/echo`: streams the request body back;
//! - `/kit/loop`: spins forever;
//! - `/kit/trap`: panics;
//! - `/kit/sleep?ms=N`: answers after N milliseconds;
//! - `/kit/count`: how many requests this instance has served;
//! - anything else: `kit` and the path.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

static SERVED: AtomicU64 = AtomicU64::new(0);

struct Kit;

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("the stream is taken once");
    // A client that went away is no failure of the handler's: it ends
    // cleanly either way.
    if stream.write_all(body).is_ok() {
        let _ = stream.flush();
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

impl wasi::exports::http::incoming_handler::Guest for Kit {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let path = request.path_with_query().unwrap_or_default();
        let (route, query) = path.split_once('?').unwrap_or((&path, ""));
        match route {
            "/kit/echo" => {
                let incoming = request.consume().expect("the body is consumed once");
                let mut stream = incoming.stream().expect("the stream is taken once");
                let mut body = Vec::new();
                match stream.read_to_end(&mut body) {
                    Ok(_) => respond(out, 200, &body),
                    Err(e) => respond(out, 400, format!("cannot read the body: {e}").as_bytes()),
                }
            }
            "/kit/loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/kit/trap" => panic!("the kit was asked to trap"),
            "/kit/sleep" => {
                let ms = query.strip_prefix("ms=").and_then(|v| v.parse().ok()).unwrap_or(100);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                respond(out, 200, format!("slept {ms} ms").as_bytes());
            }
            "/kit/count" => respond(out, 200, served.to_string().as_bytes()),
            // The head and a first part at once, the rest later: a body that
            // streams while the handler still runs.
            "/kit/drip" => {
                let response = OutgoingResponse::new(Fields::new());
                let outgoing = response.body().expect("the body is taken once");
                ResponseOutparam::set(out, Ok(response));
                let mut stream = outgoing.write().expect("the stream is taken once");
                for part in ["first ", "second ", "third"] {
                    stream.write_all(part.as_bytes()).expect("the client is there");
                    stream.flush().expect("the client is there");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                drop(stream);
                OutgoingBody::finish(outgoing, None).expect("the body ends once");
            }
            other => respond(out, 200, format!("kit {other}").as_bytes()),
        }
    }
}

wasi::http::proxy::export!(Kit);
