//! `delay_proxy UPSTREAM_PORT ONE_WAY_MS`: a loopback TCP proxy adding a
//! one-way delay each way (a round trip of twice that), for
//! `benches/site-bench.sh` (no netem in this kernel). Prints the port it
//! listens on, then runs until killed.

use std::time::Duration;

use vm_tests::fault_proxy::FaultProxy;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(port), Some(ms)) =
        (args.get(1).and_then(|p| p.parse::<u16>().ok()), args.get(2).and_then(|m| m.parse().ok()))
    else {
        eprintln!("usage: delay_proxy UPSTREAM_PORT ONE_WAY_MS");
        std::process::exit(2);
    };
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).expect("start the proxy");
    proxy.set_delay(Duration::from_millis(ms));
    println!("{}", proxy.addr().port());
    loop {
        std::thread::park();
    }
}
