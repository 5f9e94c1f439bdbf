//! A TCP proxy on loopback in front of a real service, to inject network faults:
//! - [`Proxy::cut`]: connections are closed (a database that is gone: refused/reset);
//! - [`Proxy::blackhole`]: connections are accepted and held, nothing is ever answered, and
//!   connections already open stop forwarding (a database that hangs: a partition, a frozen
//!   host). This is the harder fault: only timeouts notice it;
//! - [`Proxy::restore`]: held connections are closed, new ones are forwarded again.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Cut,
    Blackhole,
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    mode: watch::Sender<Mode>,
    conns: Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut conns) = self.conns.try_lock() {
            for h in conns.drain(..) {
                h.abort();
            }
        }
    }
}

impl Proxy {
    /// Forwards every connection to `target` (`host:port`) until told otherwise.
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (mode, watcher) = watch::channel(Mode::Forward);
        let conns: Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let held = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let now = *watcher.borrow();
                let mut watcher = watcher.clone();
                let target = target.clone();
                let h = tokio::spawn(async move {
                    match now {
                        Mode::Cut => {
                            let _ = inbound.shutdown().await;
                        }
                        // Accepted, never answered: hold the socket until restored.
                        Mode::Blackhole => std::future::pending::<()>().await,
                        Mode::Forward => {
                            let Ok(mut out) = TcpStream::connect(&target).await else {
                                return;
                            };
                            let stopped = async {
                                watcher
                                    .wait_for(|m| *m != Mode::Forward)
                                    .await
                                    .map(|m| *m)
                                    .ok()
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                                mode = stopped => {
                                    if mode == Some(Mode::Blackhole) {
                                        // Stop forwarding but keep both sockets open.
                                        std::future::pending::<()>().await;
                                    }
                                }
                            }
                        }
                    }
                });
                held.lock().await.push(h);
            }
        });
        Proxy {
            addr,
            mode,
            conns,
            accept,
        }
    }

    /// Closes every connection and every new one.
    pub async fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
        self.drop_held().await;
    }

    /// Holds every connection, open and new, without a byte of answer.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Closes what is held and forwards new connections again.
    pub async fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
        self.drop_held().await;
    }

    async fn drop_held(&self) {
        for h in self.conns.lock().await.drain(..) {
            h.abort();
        }
    }
}
