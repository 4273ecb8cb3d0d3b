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

// ---------------------------------------------------------------------------------------------
// Byte bounds

/// A 1 KiB element (`size_of` 1024; its postcard encoding, mostly zeros as varints, is far
/// smaller, but a ring counts it as its size says: see `Graph`'s "Capacity"), numbered.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Kib([[u64; 32]; 4]);

impl Kib {
    fn new(i: u64) -> Kib {
        let mut k = Kib([[0; 32]; 4]);
        k.0[0][0] = i;
        k.0[3][31] = i;
        k
    }
}

/// Passes on the numbers of the `Kib`s it reads, checking each is whole.
struct Ids {
    input: Input<Kib>,
    out: Stream<u64>,
}

impl Agent for Ids {
    fn step(&mut self, inputs: &mut Inputs, outputs: &mut Outputs) -> Result<(), AgentError> {
        let ids = outputs.vec(&self.out);
        for k in inputs.slice(&self.input) {
            assert_eq!(k.0[0][0], k.0[3][31], "a whole element");
            ids.push(k.0[0][0]);
        }
        inputs.consume_all(&self.input);
        Ok(())
    }
}

/// `n` `Kib`s in batches of `batch` → their numbers, over `conn`.
fn kibs(n: u64, batch: usize, conn: Connection) -> (Graph, iotstream::Collected<u64>) {
    let mut g = Graph::new("byte_bounds");
    let options = SourceOptions {
        max_batch: batch,
        ..SourceOptions::default()
    };
    let src = g.source_iter_with("source", (0..n).map(Kib::new), options);
    let (input, ids) = g.add_agent("ids", |p| {
        let input = p.input::<Kib>("in");
        let out = p.output::<u64>("out");
        (Ids { input, out }, (input, out))
    });
    g.connect_with(&src, &input, conn);
    let out = g.collect("out", &ids);
    (g, out)
}

/// By default a connection holds 1 MiB of elements, not 32 Ki elements: a link of 1 KiB
/// elements held up to 32 MiB in process and had a 128 MiB ring. In process the credit is
/// 1 024 elements of 1 024 bytes; a ring counts each element as the frame it may take (1 048
/// bytes, its encoding and headers), and is at most twice the bound: 2 MiB.
#[test]
fn the_default_byte_bound_keeps_a_link_of_1_kib_elements_to_1_mib() {
    assert_eq!(iotstream::DEFAULT_CAPACITY_BYTES, 1 << 20);
    let n = 20_000;
    for (transport, credit, ring) in [
        (Transport::Auto, 1024, None),
        (Transport::SharedMemory, 999, Some(2 << 20)),
    ] {
        let (g, out) = kibs(n, 1024, Connection::new().transport(transport));
        let info = g.info();
        assert_eq!(info.edges[0].capacity, iotstream::DEFAULT_CAPACITY);
        assert_eq!(info.edges[0].capacity_bytes, 1 << 20);
        assert_eq!(info.edges[0].element_bytes, 1024);
        assert_eq!(info.edges[0].credit, credit, "{transport:?}");
        assert_eq!(info.edges[0].ring_bytes, ring, "{transport:?}");
        let metrics = g.run().unwrap();
        assert_eq!(out.values(), (0..n).collect::<Vec<_>>(), "{transport:?}");
        let link = metrics.link("source.out", "ids").unwrap();
        assert_eq!(link.capacity, credit);
        assert!(
            link.max_in_flight > 0 && link.max_in_flight as usize <= credit,
            "{transport:?}: {} in flight",
            link.max_in_flight
        );
        assert!(link.max_in_flight * 1024 <= 1 << 20);
    }
}

/// A batch larger than the byte bound is split at it, and an element larger than the bound
/// travels alone: everything arrives, in order, within the bound (one element at least).
#[test]
fn a_batch_larger_than_the_byte_bound_is_split_and_a_larger_element_travels_alone() {
    let n = 3_000;
    // The credit in process (bytes / 1024) and on a ring (bytes / 1048, less one).
    for (transport, ring) in [(Transport::Auto, false), (Transport::SharedMemory, true)] {
        for (bytes, local, in_ring) in [(3_500, 3, 2), (100, 1, 1)] {
            let credit = if ring { in_ring } else { local };
            let what = format!("{transport:?}, capacity_bytes {bytes}");
            let conn = Connection::new().capacity_bytes(bytes).transport(transport);
            let (g, out) = kibs(n, 512, conn);
            let metrics = g.run().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(out.values(), (0..n).collect::<Vec<_>>(), "{what}");
            let link = metrics.link("source.out", "ids").unwrap();
            assert_eq!(link.capacity, credit, "{what}");
            assert_eq!(link.elements, n, "{what}");
            assert!(
                link.max_in_flight > 0 && link.max_in_flight as usize <= credit,
                "{what}: {} in flight",
                link.max_in_flight
            );
        }
    }
}

/// A byte bound set on a connection must hold what the reader needs to make progress (an
/// error naming the connection otherwise); the default bound is raised to it.
#[test]
fn a_byte_bound_too_small_for_the_reader_is_an_error_and_the_default_is_raised_to_it() {
    let build = |conn: Connection| {
        let mut g = Graph::new("byte_bound_need");
        let src = g.source_iter("source", 0..100u64);
        let (input, sums) = g.add_agent("run_sums", |p| {
            let input = p.input::<u64>("in");
            let out = p.output::<u64>("out");
            p.needs_at_least(&input, 10);
            (
                RunSums {
                    input,
                    out,
                    size: 10,
                },
                (input, out),
            )
        });
        g.connect_with(&src, &input, conn);
        let out = g.collect("out", &sums);
        (g, out)
    };
    let (g, _) = build(Connection::new().capacity_bytes(40));
    let err = g.run().unwrap_err().to_string();
    assert!(
        err.contains(
            "connection source.out -> run_sums.in: capacity_bytes 40 holds 5 elements of 8 \
             bytes, fewer than the 10 elements agent 'run_sums' needs to make progress"
        ),
        "{err}"
    );
    let (mut g, out) = build(Connection::new());
    g.set_default_capacity_bytes(16);
    let metrics = g.run().unwrap();
    assert_eq!(out.values(), expected(100, 10));
    assert_eq!(metrics.link("source.out", "run_sums").unwrap().capacity, 10);
}
