//! A standard `wasi:http/incoming-handler` component, with nothing
//! fabric-specific in it: deploy it under a route and every host serves it.
//!
//! ```text
//! fabric deploy examples/target/wasm32-wasip2/release/http_hello.wasm --name hello --route /hello
//! fabric call /hello/world
//! ```

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain; charset=utf-8".to_vec())])
            .expect("a valid header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("the body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let stream = body.write().expect("the stream is taken once");
        let text = format!("Hello from fabric! You asked for {path}\n");
        stream.blocking_write_and_flush(text.as_bytes()).expect("the client is there");
        drop(stream);
        OutgoingBody::finish(body, None).expect("the body ends once");
    }
}

wasi::http::proxy::export!(Hello);
