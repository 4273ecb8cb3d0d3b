//! Credit-based flow control never stalls a reader that needs several elements to make progress,
//! whatever the capacity, the writer's batch size and the executor; and nothing is lost.

use iotstream::{
    Agent, AgentError, Connection, Graph, Harness, Input, Inputs, Outputs, Source, SourceOptions,
    Stream, Transport,
};

/// Sums consecutive, non-overlapping runs of `size` elements; consumes only whole runs.
struct RunSums {
    input: Input<u64>,
    out: Stream<u64>,
    size: usize,
}

impl Agent for RunSums {
    fn step(&mut self, inputs: &mut Inputs, outputs: &mut Outputs) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let whole = new.len() / self.size * self.size;
        let out = outputs.vec(&self.out);
        out.extend(
            new[..whole]
                .chunks(self.size)
                .map(|c| c.iter().sum::<u64>()),
        );
        inputs.consume(&self.input, whole);
        Ok(())
    }
}

/// 0, 1, 2, … `n - 1`, in batches of at most `max`.
struct Count {
    next: u64,
    n: u64,
}

impl Source<u64> for Count {
    fn fill(&mut self, out: &mut Vec<u64>, max: usize) -> Result<bool, AgentError> {
        let end = (self.next + max as u64).min(self.n);
        out.extend(self.next..end);
        self.next = end;
        Ok(self.next < self.n)
    }
}

/// source (batches of `batch`) → run sums of `size` → collect, over a connection of `capacity`
/// (in process).
fn graph(n: u64, batch: usize, size: usize, capacity: usize) -> (Graph, iotstream::Collected<u64>) {
    graph_over(n, batch, size, capacity, Transport::Auto)
}

/// [`graph`] over `transport`.
fn graph_over(
    n: u64,
    batch: usize,
    size: usize,
    capacity: usize,
    transport: Transport,
) -> (Graph, iotstream::Collected<u64>) {
    let mut g = Graph::new("flow_control");
    let options = SourceOptions {
        max_batch: batch,
        ..SourceOptions::default()
    };
    let src = g.source_with("source", Count { next: 0, n }, options);
    let (input, sums) = g.add_agent("run_sums", |p| {
        let input = p.input::<u64>("in");
        let out = p.output::<u64>("out");
        p.needs_at_least(&input, size);
        (RunSums { input, out, size }, (input, out))
    });
    g.connect_with(
        &src,
        &input,
        Connection::new().capacity(capacity).transport(transport),
    );
    let out = g.collect("out", &sums);
    (g, out)
}

fn expected(n: u64, size: usize) -> Vec<u64> {
    let v: Vec<u64> = (0..n).collect();
    v.chunks_exact(size).map(|c| c.iter().sum()).collect()
}

#[test]
fn readers_that_need_many_elements_never_stall() {
    let n = 2_000;
    for capacity in [1, 2, 3, 4, 5, 7, 8, 16, 33, 100] {
        for size in [1, 2, 3, capacity / 2, capacity - 1, capacity] {
            if size == 0 || size > capacity {
                continue;
            }
            for batch in [1, 3, 64, 1024] {
                let want = expected(n, size);
                let (g, out) = graph(n, batch, size, capacity);
                let mut h = Harness::new(g).expect("well formed");
                h.run().expect("harness runs");
                h.finish().unwrap_or_else(|e| {
                    panic!("harness: capacity {capacity}, size {size}, batch {batch}: {e}")
                });
                assert_eq!(
                    out.values(),
                    want,
                    "harness: capacity {capacity}, size {size}, batch {batch}"
                );

                let (g, out) = graph(n, batch, size, capacity);
                let metrics = g.run().unwrap_or_else(|e| {
                    panic!("threads: capacity {capacity}, size {size}, batch {batch}: {e}")
                });
                assert_eq!(
                    out.values(),
                    want,
                    "threads: capacity {capacity}, size {size}, batch {batch}"
                );
                let link = metrics
                    .link("source.out", "run_sums")
                    .expect("the link exists");
                assert!(link.max_in_flight <= capacity as u64);
                assert_eq!(link.elements, n);
            }
        }
    }
}

/// A capacity of N on a shared-memory ring means what it means in process: at most N elements
/// in flight between the writer's send and the reading agent's consumption, whatever the
/// writer's batches (it splits them at its credit, as an in-process link sends a sub-range),
/// and a reader that needs several elements never stalls (consumption inside a frame counts).
/// The reader's end counts what it read from the ring and has not consumed; the writer's end
/// what it wrote and has not seen consumed.
#[test]
fn a_ring_holds_at_most_capacity_elements_in_flight() {
    let n = 2_000;
    for capacity in [1, 7, 64] {
        let mut sizes = vec![1, capacity / 2, capacity];
        sizes.sort_unstable();
        sizes.dedup();
        for size in sizes.into_iter().filter(|&s| s > 0) {
            for batch in [1, 5, 512] {
                let what = format!("capacity {capacity}, size {size}, batch {batch}");
                let (g, out) = graph_over(n, batch, size, capacity, Transport::SharedMemory);
                let metrics = g.run().unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(out.values(), expected(n, size), "{what}");
                let link = metrics
                    .link("source.out", "run_sums")
                    .expect("the link exists");
                assert_eq!(link.elements, n, "{what}");
                assert_eq!(link.released_early, 0, "{what}: nothing released early");
                assert!(
                    link.max_in_flight > 0 && link.max_in_flight <= capacity as u64,
                    "{what}: at most {} elements in flight",
                    link.max_in_flight
                );
            }
        }
    }
}
