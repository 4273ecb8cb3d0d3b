//! Element and list operators give the same output whatever the batch boundaries: random input
//! pushed in random chunks equals one batch, and equals a plain reference implementation.

use iotstream::{Graph, Harness};
use proptest::prelude::*;

/// Splits `data` into chunks of the given sizes (cycled), at least one element each.
fn chunks(data: &[i32], sizes: &[usize]) -> Vec<Vec<i32>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < data.len() {
        let n = sizes[k % sizes.len()].max(1).min(data.len() - i);
        out.push(data[i..i + n].to_vec());
        i += n;
        k += 1;
    }
    out
}

/// Runs every element operator on the same input pushed as `pushes`, with a run after each.
fn run_all(pushes: &[Vec<i32>], capacity: usize) -> Vec<Vec<i64>> {
    let mut g = Graph::new("elements");
    g.set_default_capacity(capacity);
    let x = g.input::<i32>("x");
    let streams = [
        g.map("map", &x, |v: &i32| i64::from(*v) * 3),
        g.filter_map("filter", &x, |v: &i32| {
            (v % 3 == 0).then_some(i64::from(*v))
        }),
        g.filter_map("filter_map", &x, |v: &i32| {
            (*v > 0).then(|| i64::from(*v) - 1)
        }),
        g.flat_map("flat_map", &x, |v: &i32| {
            vec![i64::from(*v); (v.unsigned_abs() % 3) as usize]
        }),
        g.map_with_state("with_state", &x, 0i64, |v: &i32, s| {
            (s + i64::from(*v), s + i64::from(*v))
        }),
        g.map_list("map_list", &x, |xs: &[i32]| {
            xs.iter().map(|v| i64::from(*v) - 7).collect()
        }),
        {
            let kept = g.filter("filter_itself", &x, |v: &i32| v % 4 != 0);
            g.map("widen", &kept, |v: &i32| i64::from(*v))
        },
    ];
    let outs: Vec<_> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| g.collect(&format!("out{i}"), s))
        .collect();
    let mut h = Harness::new(g).unwrap();
    for p in pushes {
        h.push(&x, p.clone()).unwrap();
        h.run().unwrap();
    }
    h.finish().unwrap();
    outs.iter().map(|o| o.values()).collect()
}

fn reference(data: &[i32]) -> Vec<Vec<i64>> {
    let wide: Vec<i64> = data.iter().map(|v| i64::from(*v)).collect();
    let mut sum = 0;
    vec![
        wide.iter().map(|v| v * 3).collect(),
        wide.iter().copied().filter(|v| v % 3 == 0).collect(),
        wide.iter().filter(|v| **v > 0).map(|v| v - 1).collect(),
        wide.iter()
            .flat_map(|v| vec![*v; (v.unsigned_abs() % 3) as usize])
            .collect(),
        wide.iter()
            .map(|v| {
                sum += v;
                sum
            })
            .collect(),
        wide.iter().map(|v| v - 7).collect(),
        wide.iter().copied().filter(|v| v % 4 != 0).collect(),
    ]
}

/// `filter` over an element that owns heap memory: each kept element is a clone of its own.
fn filter_strings(pushes: &[Vec<i32>], capacity: usize) -> Vec<String> {
    let mut g = Graph::new("strings");
    g.set_default_capacity(capacity);
    let x = g.input::<String>("x");
    let kept = g.filter("keep", &x, |s: &String| !s.ends_with('7'));
    let out = g.collect("out", &kept);
    let mut h = Harness::new(g).unwrap();
    for p in pushes {
        h.push(&x, p.iter().map(|v| format!("value {v}"))).unwrap();
        h.run().unwrap();
    }
    h.finish().unwrap();
    out.values()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn batch_boundaries_never_change_element_operators(
        data in proptest::collection::vec(-1000i32..1000, 0..300),
        sizes in proptest::collection::vec(1usize..40, 1..8),
        capacity in 1usize..64,
    ) {
        let expected = reference(&data);
        let one_batch = run_all(std::slice::from_ref(&data), 1 << 14);
        let chunked = run_all(&chunks(&data, &sizes), capacity);
        prop_assert_eq!(&one_batch, &expected);
        prop_assert_eq!(&chunked, &expected);
    }

    #[test]
    fn filter_keeps_owned_elements_whatever_the_batches(
        data in proptest::collection::vec(-1000i32..1000, 0..300),
        sizes in proptest::collection::vec(1usize..40, 1..8),
        capacity in 1usize..64,
    ) {
        let expected: Vec<String> = data
            .iter()
            .map(|v| format!("value {v}"))
            .filter(|s| !s.ends_with('7'))
            .collect();
        prop_assert_eq!(&filter_strings(std::slice::from_ref(&data), 1 << 14), &expected);
        prop_assert_eq!(&filter_strings(&chunks(&data, &sizes), capacity), &expected);
    }
}

/// A `filter` whose function panics in the middle of a batch of owned elements fails naming
/// its agent; the elements it had kept of that batch are not handed on (nor dropped twice).
#[test]
fn a_filter_panicking_in_a_batch_fails_naming_it() {
    let mut g = Graph::new("panicky");
    let x = g.input::<String>("x");
    let kept = g.filter("keep", &x, |s: &String| {
        assert!(s != "boom", "cannot judge {s}");
        true
    });
    let out = g.collect("out", &kept);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, ["a", "b", "boom", "c"].map(String::from))
        .unwrap();
    let err = h.run().unwrap_err();
    assert_eq!(err.agent(), Some("keep"), "{err}");
    assert!(err.to_string().contains("cannot judge boom"), "{err}");
    assert!(out.values().is_empty(), "{:?}", out.values());
}
