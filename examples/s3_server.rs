//! A local S3-compatible server for benchmarks and manual tries: `s3s` over `s3s-fs`, serving a
//! directory on a loopback port with static credentials.
//!
//! ```text
//! cargo run --release --example s3_server -- DIR [--port N] [--bucket NAME]...
//! ```
//!
//! Each `--bucket` (default `warmcache`) is created as a directory of DIR. Prints one line,
//! `endpoint=http://127.0.0.1:PORT`, once it listens, then serves until killed. Clients use the
//! access key `warmcache` and the secret key `warmcache-secret` (region `us-east-1`).
//!
//! Conditional PUTs (`If-Match`, `If-None-Match`) run one at a time: s3s-fs checks the
//! precondition and writes in two steps, and real stores apply the two atomically.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;

const ACCESS_KEY: &str = "warmcache";
const SECRET_KEY: &str = "warmcache-secret";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut root: Option<PathBuf> = None;
    let mut port = 0u16;
    let mut buckets = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().ok_or("--port needs a number")?.parse()?,
            "--bucket" => buckets.push(args.next().ok_or("--bucket needs a name")?),
            "-h" | "--help" => {
                println!("usage: s3_server DIR [--port N] [--bucket NAME]...");
                return Ok(());
            }
            _ if root.is_none() => root = Some(PathBuf::from(arg)),
            other => return Err(format!("unexpected argument `{other}`").into()),
        }
    }
    let root = root.ok_or("usage: s3_server DIR [--port N] [--bucket NAME]...")?;
    if buckets.is_empty() {
        buckets.push("warmcache".to_owned());
    }
    for bucket in &buckets {
        std::fs::create_dir_all(root.join(bucket))?;
    }

    let fs =
        s3s_fs::FileSystem::new(&root).map_err(|e| format!("cannot serve `{}`: {e:?}", root.display()))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(service, SocketAddr::from(([127, 0, 0, 1], port))))
}

async fn serve(service: S3Service, addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "endpoint=http://{}", listener.local_addr()?)?;
    stdout.flush()?;
    let conditional_puts = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let service = service.clone();
        let conditional_puts = conditional_puts.clone();
        let handler = service_fn(move |req: Request<Incoming>| {
            let service = service.clone();
            let conditional_puts = conditional_puts.clone();
            async move {
                let conditional = req.method() == Method::PUT
                    && (req.headers().contains_key("if-match")
                        || req.headers().contains_key("if-none-match"));
                let req = req.map(s3s::Body::from);
                if conditional {
                    let _one_at_a_time = conditional_puts.lock().await;
                    service.call(req).await
                } else {
                    service.call(req).await
                }
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
}
