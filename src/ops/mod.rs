//! The operator library: plain functions turned into agents, in IoTPy's vocabulary.
//!
//! Every operator is a method on [`Graph`](crate::Graph) that adds one agent, connects its
//! inputs to the streams given, and returns its output stream(s). See `docs/operators.md` for
//! the full table with IoTPy's names.
//!
//! | family | module |
//! |---|---|
//! | element and list: map, filter, filter_map, flat_map, with state (and at the end), map_list, skip, take | [`element`] |
//! | sources: iterators, timed functions, files, stdin, program input | [`source`] |
//! | sinks: for_each, with state, collect, file (with a formatter, appending or truncating), JSON lines, stdout | [`sink`] |
//! | following a growing file (`tail -F`: rotation, truncation, resuming from an offset file) | [`follow`] |
//! | posting JSON batches to a web hook (bounded requests, retries, undelivered counted) | [`webhook`] |
//! | count windows: map_window, merge_window, split_window, multi_window, sink_window | [`window`] |
//! | event time: watermarks, idleness | [`event`] |
//! | event-time windows (tumbling, sliding, session), lateness, keys, keyed state | [`event_window`] |
//! | keyed rolling aggregates: keyed_rolling | [`rolling`] |
//! | timed windows over `(timestamp, value)` streams: timed_window | [`timed`] |
//! | rolling aggregates, O(1) per element: count, sum, mean, min, max, variance; timed | [`rolling`] |
//! | merges: zip, zip3, zip_map, mix, blend, timed_zip, timed_mix | [`merge`] |
//! | event-time joins of two types: timed_join (nearest within a tolerance), timed_zip2 | [`join`] |
//! | MQTT: source_mqtt (subscribe, decode UTF-8, JSON or bytes), sink_mqtt (publish to a topic template) | [`mqtt`] |
//! | splits: split, split_either, split3, unzip, unzip3, separate, multi_element | [`split`] |

pub mod element;
pub mod event;
pub mod event_window;
pub mod follow;
pub(crate) mod handoff;
pub mod join;
pub mod merge;
pub mod mqtt;
pub mod rolling;
pub mod sink;
pub mod source;
pub mod split;
pub mod timed;
pub mod webhook;
pub mod window;
