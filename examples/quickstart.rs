//! Quickstart: a temperature sensor → Fahrenheit → mean of every 4 readings → print.
use iotstream::Graph;

fn main() {
    iotstream::init_logging(); // tracing output on stderr, filtered by RUST_LOG
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), iotstream::Error> {
    let mut g = Graph::new("quickstart");
    let celsius = g.source_iter("sensor", [20.0, 21.5, 22.0, 23.5, 30.0, 31.0, 29.5, 30.5]);
    let fahrenheit = g.map("to_fahrenheit", &celsius, |c: &f64| c * 9.0 / 5.0 + 32.0);
    let means = g.map_window("mean", &fahrenheit, 4, 4, |w: &[f64]| {
        w.iter().sum::<f64>() / 4.0
    });
    g.for_each("print", &means, |m: &f64| println!("mean of 4: {m:.2} °F"));
    g.run()?;
    Ok(())
}
