//! Which ring frames a feeder may release: only those whose elements its reader has consumed.
//!
//! A feeder ([`super::spawn_feeder`]) decodes frames from its ring and delivers their elements
//! to the reading agent's input. If it released a frame as soon as it had decoded it, elements
//! still waiting in the reading process (in the feeder, or in the input, not yet consumed by the
//! agent) would be lost with that process: a consumer that takes the ring over starts at the
//! released tail. So the feeder keeps the frames it has read in a [`Held`] list, `(end position,
//! element count)` oldest first, and releases the ring up to the end of the last frame whose
//! elements have **all been consumed**. Consumption is what the reading input credits back to
//! the feeder (in groups, and for a ring input only once the step's outputs are handed on:
//! see `Host::run`); elements are delivered and consumed in order, so the first `n` consumed
//! elements are the first `n` held.
//!
//! - A frame without elements is released as soon as every frame before it is.
//! - A mark frame (see `codec`'s "Marks") holds no element either, but it is released only
//!   once it was also **delivered** to the reading host ([`Held::read_mark`],
//!   [`Held::mark_delivered`]): a feeder that delivers within credit may hold it behind data
//!   that waits for credit, and a reader that takes the ring over must read it again if the
//!   dead one never passed it on. Everything before it consumed and the mark delivered, the
//!   host has it in order after those elements. (Not covered: a reading process that dies
//!   after the delivery and before its agent's next step forwarded the mark; the marks after
//!   it say at least as much.)
//! - A reader that consumes what it is given always gives space back: a ring input returns its
//!   credit after every step, without grouping (see `InBuf` in `host.rs`), so a writer waiting
//!   for space held here gets it as soon as the elements in it are consumed, however slow the
//!   reader, whatever the elements' sizes.
//! - The parts of a large element (one element split over several frames, see `codec`) are
//!   one held frame of one element, whose end moves with each part read ([`Held::read_part`]):
//!   the ring is released past them all at once, once the element is consumed, never to a
//!   position inside the element. Only the fallback can release a first part early; the later
//!   parts of that element are then released as they are reached, and a reader that takes the
//!   ring over at such a position skips them (the element is lost and counted). If the writer
//!   dies before the last part, the restarted writer's first frame says so (see `codec`): the
//!   parts read then hold no element any more ([`Held::abandon_part`]) and are released as an
//!   empty frame is.
//! - **Fallback** ([`Held::release_early`]), the one exception, and only where waiting would
//!   deadlock: the reading agent **waits for more** (its last step saw every element delivered
//!   and left them unconsumed, as a count window does: the host then does not step it again
//!   before more arrives, and says so, `Mailbox::reader_waits`; or it consumed everything
//!   delivered and the element it needs next is a large one whose first parts are held here,
//!   [`Held::is_open`]), it could take more (the feeder has credit), no unread frame is
//!   published, and the writer waits for space that only the held frames can give. A reader
//!   that is merely slow never says it waits, nor has it consumed everything: before, this rule
//!   fired on any full ring with credit left, and a slow reader lost what was released if its
//!   process died. The feeder then releases the oldest held frame, only one, and gives the
//!   writer a wait slice to write into that room (it writes whatever fits, down to one element
//!   or a part of one word) or to say again that it waits; it watches for this only while the
//!   ring has less room than any frame the writer may write next ([`room_needed`]: the largest
//!   frame, plus what a wrap skips). Their not yet consumed elements lose their protection: they are counted
//!   (`LinkStats::released_early`, with a warning naming the connection and the capacity to
//!   raise), and the next consumption pays them off before it counts for the frames still held.
//!   Rings are sized so that a connection's whole credit of plain-data elements, one per frame,
//!   takes at most half the ring (`super::ring_bytes`), so an agent waiting for fewer elements
//!   than the capacity rarely gets there; for encoded elements the ring's size is an estimate.
//!   The writer says that it waits for space by a flag in the ring and a wake-up of the feeder
//!   (see the ring's docs), so the fallback costs no polling; while the ring has that much room,
//!   the writer cannot be waiting for held frames and the feeder does not watch for it.

use std::collections::VecDeque;

/// The most bytes a producer whose next frame starts at data offset `off` of a ring of `cap`
/// bytes may need for that frame: the largest frame (`cap / 2`, header included), plus the
/// bytes a wrap marker skips when the frame does not fit before the end of the data area.
pub(crate) fn room_needed(cap: u64, off: u64) -> u64 {
    let largest = cap / 2;
    let to_end = cap - off;
    if to_end >= largest {
        largest
    } else {
        to_end + largest
    }
}

/// A frame read and not released.
#[derive(Debug, Clone, Copy)]
struct HeldFrame {
    /// Its end position in the ring.
    end: u64,
    /// Its elements.
    count: usize,
    /// A mark frame not delivered yet: it holds the frames after it too.
    undelivered: bool,
}

impl HeldFrame {
    fn new(end: u64, count: usize) -> HeldFrame {
        HeldFrame {
            end,
            count,
            undelivered: false,
        }
    }
}

/// Frames read and not released, and how far consumption has gone (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Each frame read and not released, oldest first.
    frames: VecDeque<HeldFrame>,
    /// Elements consumed that belong to the front frame (always fewer than its count).
    credited: usize,
    /// Elements of frames released early and not consumed yet: consumption pays them first.
    early: usize,
    /// The last frame held is the start of a large element whose other parts are still being
    /// read ([`read_part`](Held::read_part)).
    open: bool,
    /// The large element whose parts are being read had its first part released early (it is
    /// counted in `early`).
    open_early: bool,
}

impl Held {
    pub(crate) fn new() -> Held {
        Held::default()
    }

    /// No frame is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The last frame held starts a large element whose remaining parts are not read yet: the
    /// reader cannot have that element before they are, however much it consumes.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// Elements of the frames held that are consumed already (frames are released only once
    /// all their elements are): what the feeder tells the writer through the ring's
    /// `consumed`, so that a writer bounding its elements in flight sees consumption that ends
    /// inside a frame.
    pub(crate) fn consumed_held(&self) -> usize {
        self.credited
    }

    /// Elements of the frames held and not consumed.
    #[cfg(test)]
    fn unconsumed(&self) -> usize {
        self.frames.iter().map(|f| f.count).sum::<usize>() - self.credited
    }

    /// A frame of `count` elements was read; it ends at ring position `end`. Returns the
    /// position to release the ring to now, if any (an empty frame with nothing held before
    /// it).
    pub(crate) fn read(&mut self, end: u64, count: usize) -> Option<u64> {
        self.frames.push_back(HeldFrame::new(end, count));
        self.settle()
    }

    /// A mark frame was read; it ends at ring position `end`. It is held until it is
    /// [delivered](Held::mark_delivered) and every frame before it released.
    pub(crate) fn read_mark(&mut self, end: u64) {
        self.frames.push_back(HeldFrame {
            end,
            count: 0,
            undelivered: true,
        });
    }

    /// The oldest mark read and not delivered was delivered (marks are delivered in the order
    /// they were read). Returns the position to release the ring to now, if any.
    pub(crate) fn mark_delivered(&mut self) -> Option<u64> {
        let mark = self.frames.iter_mut().find(|f| f.undelivered);
        debug_assert!(mark.is_some(), "a mark delivered that was never read");
        if let Some(f) = mark {
            f.undelivered = false;
        }
        self.settle()
    }

    /// A part of a large element was read (see `codec`); it ends at ring position `end`.
    /// Parts count as one frame of one element, held until that element is consumed: the
    /// first part adds it, each later part moves its end. If the fallback released the first
    /// part early (the element already counted as released early), the later parts are
    /// released as soon as they are reached, as empty frames are. Returns the position to
    /// release the ring to now, if any.
    pub(crate) fn read_part(&mut self, end: u64, first: bool, last: bool) -> Option<u64> {
        if first {
            self.frames.push_back(HeldFrame::new(end, 1));
            self.open = !last;
            self.open_early = false;
            return self.settle();
        }
        match self.frames.back_mut() {
            Some(back) if self.open => {
                back.end = end;
                self.open = !last;
                None
            }
            _ => {
                self.open = false;
                if last {
                    self.open_early = false;
                }
                self.read(end, 0)
            }
        }
    }

    /// The large element whose parts were being read will never be complete: its writer died
    /// and the restarted one starts over (see `codec`). Its frame becomes a frame of no
    /// element, released as soon as every frame before it is; if the fallback had released its
    /// first part early, it no longer waits to be consumed. Returns the position to release
    /// the ring to now, if any.
    pub(crate) fn abandon_part(&mut self) -> Option<u64> {
        if std::mem::take(&mut self.open) {
            if let Some(back) = self.frames.back_mut() {
                back.count = 0;
            }
            return self.settle();
        }
        if std::mem::take(&mut self.open_early) {
            self.early = self.early.saturating_sub(1);
        }
        None
    }

    /// `n` more elements were consumed. Returns the position to release the ring to, if it
    /// moved: the end of the last frame whose elements are now all consumed.
    pub(crate) fn consumed(&mut self, n: usize) -> Option<u64> {
        let paid = n.min(self.early);
        self.early -= paid;
        self.credited += n - paid;
        self.settle()
    }

    /// The fallback: releases the oldest frames, at least one, until `enough(end)` holds for
    /// the end of the last one released (or none is left), then any empty frames after it.
    /// Returns the position to release the ring to and how many elements of the released
    /// frames were not consumed yet (they lose their protection); `None` if nothing is held.
    pub(crate) fn release_early(&mut self, enough: impl Fn(u64) -> bool) -> Option<(u64, usize)> {
        let mut released = None;
        let mut unconsumed = 0;
        while let Some(HeldFrame {
            end,
            count,
            undelivered,
        }) = self.frames.pop_front()
        {
            // The feeder falls back only with nothing waiting to be delivered.
            debug_assert!(!undelivered, "a mark released before it was delivered");
            // Only the front frame has credited elements; they are used up here.
            unconsumed += count - std::mem::take(&mut self.credited);
            released = Some(end);
            if enough(end) {
                break;
            }
        }
        self.early += unconsumed;
        if self.frames.is_empty() {
            // The element being read in parts, if any, was the last frame: released.
            self.open_early |= std::mem::take(&mut self.open);
        }
        let pos = self.settle().or(released)?;
        Some((pos, unconsumed))
    }

    /// Pops the frames at the front whose elements are all consumed.
    fn settle(&mut self) -> Option<u64> {
        let mut pos = None;
        while let Some(&f) = self.frames.front() {
            if f.count > self.credited || f.undelivered {
                break;
            }
            self.credited -= f.count;
            self.frames.pop_front();
            pos = Some(f.end);
        }
        if self.frames.is_empty() {
            // An element being read in parts is never consumed before its last part; this only
            // keeps `open` true to its meaning whatever the credit says.
            self.open = false;
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_needed_covers_the_largest_frame_and_its_wrap() {
        assert_eq!(room_needed(1024, 0), 512);
        assert_eq!(room_needed(1024, 512), 512, "fits exactly before the end");
        assert_eq!(
            room_needed(1024, 520),
            504 + 512,
            "skips 504 bytes, then 512 at 0"
        );
        assert_eq!(room_needed(1024, 1016), 8 + 512);
    }

    #[test]
    fn a_frame_is_released_once_all_its_elements_are_consumed() {
        let mut h = Held::new();
        assert_eq!(h.read(16, 3), None);
        assert_eq!(h.read(40, 2), None);
        assert_eq!(h.read(64, 4), None);
        assert_eq!(h.unconsumed(), 9);
        assert_eq!(h.consumed(2), None, "2 of the first frame's 3");
        assert_eq!(h.consumed(1), Some(16));
        assert_eq!(
            h.consumed(5),
            Some(40),
            "the second, and 3 of the third's 4"
        );
        assert_eq!(h.unconsumed(), 1);
        assert_eq!(h.consumed(1), Some(64));
        assert!(h.is_empty());
        assert_eq!(h.consumed(0), None);
    }

    #[test]
    fn credit_in_groups_releases_several_frames_at_once() {
        let mut h = Held::new();
        for i in 0..10u64 {
            assert_eq!(h.read(16 * (i + 1), 5), None);
        }
        assert_eq!(h.consumed(25), Some(80));
        assert_eq!(
            h.consumed(24),
            Some(144),
            "the last frame still lacks one element"
        );
        assert_eq!(h.consumed(1), Some(160));
        assert!(h.is_empty());
    }

    #[test]
    fn empty_frames_are_released_when_reached() {
        let mut h = Held::new();
        assert_eq!(h.read(8, 0), Some(8), "nothing before it: released at once");
        assert_eq!(h.read(24, 2), None);
        assert_eq!(h.read(32, 0), None, "behind a frame not consumed");
        assert_eq!(h.read(40, 0), None);
        assert_eq!(
            h.consumed(2),
            Some(40),
            "the frame and the empty ones after it"
        );
        assert!(h.is_empty());
    }

    #[test]
    fn the_fallback_releases_the_oldest_frames_until_enough_and_counts_what_was_unconsumed() {
        let mut h = Held::new();
        for (end, count) in [(100, 4), (200, 4), (300, 4), (310, 0), (400, 4)] {
            h.read(end, count);
        }
        assert_eq!(h.consumed(3), None);
        // Enough once the ring is released to 200: two frames go, 1 + 4 elements unconsumed;
        // the empty frame after the second is not reached yet.
        assert_eq!(h.release_early(|end| end >= 200), Some((200, 5)));
        assert_eq!(h.unconsumed(), 8);
        // The next 5 elements consumed are those released early: nothing more to release.
        assert_eq!(h.consumed(4), None);
        assert_eq!(h.consumed(1), None);
        assert_eq!(
            h.consumed(4),
            Some(310),
            "the third frame and the empty one after it"
        );
        // At least one frame goes, even if it is already enough.
        assert_eq!(h.release_early(|_| true), Some((400, 4)));
        assert!(h.is_empty());
        assert_eq!(h.release_early(|_| true), None, "nothing held");
        assert_eq!(h.consumed(4), None, "pays off the early release");
        assert_eq!(h.read(420, 1), None);
        assert_eq!(h.consumed(1), Some(420), "counts for held frames again");
    }

    #[test]
    fn the_parts_of_a_large_element_are_held_until_it_is_consumed() {
        let mut h = Held::new();
        assert_eq!(h.read(16, 1), None);
        assert_eq!(h.read_part(100, true, false), None);
        assert_eq!(h.read_part(200, false, false), None);
        assert_eq!(h.consumed(1), Some(16), "the frame before it");
        assert_eq!(
            h.read_part(300, false, true),
            None,
            "delivered, not consumed"
        );
        assert_eq!(h.read(320, 2), None);
        assert_eq!(h.unconsumed(), 3);
        assert_eq!(
            h.consumed(1),
            Some(300),
            "every part at once, at the end of the last one: never inside the element"
        );
        assert_eq!(h.consumed(2), Some(320));
        assert!(h.is_empty());
    }

    #[test]
    fn parts_after_a_first_part_released_early_are_released_when_reached() {
        let mut h = Held::new();
        h.read(16, 2);
        assert_eq!(h.read_part(100, true, false), None);
        // The fallback releases the held frames, the element's first part with them: its one
        // element is counted as released before it was consumed.
        assert_eq!(h.release_early(|end| end >= 100), Some((100, 3)));
        assert!(h.is_empty());
        assert_eq!(
            h.read_part(200, false, false),
            Some(200),
            "nothing left to protect"
        );
        assert_eq!(h.read_part(300, false, true), Some(300));
        assert_eq!(h.read(320, 1), None, "an element after it is held as usual");
        assert_eq!(h.consumed(3), None, "pays the early release");
        assert_eq!(h.consumed(1), Some(320));
    }

    #[test]
    fn a_large_element_whose_writer_died_holds_nothing_any_more() {
        let mut h = Held::new();
        h.read(16, 1);
        assert_eq!(h.read_part(100, true, false), None);
        assert_eq!(h.read_part(200, false, false), None);
        // The restarted writer's first frame: the element's parts hold no element now,
        // released once the frame before them is consumed.
        assert_eq!(h.abandon_part(), None, "behind a frame not consumed");
        assert!(!h.is_open());
        assert_eq!(h.read(240, 2), None);
        assert_eq!(
            h.consumed(1),
            Some(200),
            "the frame and the abandoned parts"
        );
        assert_eq!(h.consumed(2), Some(240));
        assert!(h.is_empty());
        // Nothing before it: released at once.
        assert_eq!(h.read_part(300, true, false), None);
        assert_eq!(h.abandon_part(), Some(300));
        assert!(h.is_empty());
    }

    #[test]
    fn a_large_element_released_early_whose_writer_died_is_not_waited_for() {
        let mut h = Held::new();
        h.read(16, 2);
        h.read_part(100, true, false);
        assert_eq!(h.release_early(|_| false), Some((100, 3)));
        assert_eq!(h.read_part(200, false, false), Some(200));
        // The element will never be delivered, so never consumed: only the two before it
        // are still to pay for the early release.
        assert_eq!(h.abandon_part(), None);
        assert_eq!(h.read(240, 1), None);
        assert_eq!(h.consumed(2), None, "pays the early release");
        assert_eq!(
            h.consumed(1),
            Some(240),
            "counts for the held frame at once"
        );
    }

    #[test]
    fn a_mark_frame_is_released_once_delivered_and_everything_before_it_consumed() {
        let mut h = Held::new();
        h.read(16, 2);
        h.read_mark(32);
        assert_eq!(h.read(48, 1), None);
        assert_eq!(h.consumed(2), Some(16), "the mark is not delivered yet");
        assert_eq!(h.mark_delivered(), Some(32), "delivered: released at once");
        assert_eq!(h.consumed(1), Some(48));
        // Delivered before what is before it is consumed: released with it.
        h.read(60, 1);
        h.read_mark(70);
        assert_eq!(h.mark_delivered(), None, "behind a frame not consumed");
        h.read_mark(80);
        assert_eq!(h.consumed(1), Some(70), "the second mark still waits");
        assert_eq!(h.mark_delivered(), Some(80));
        assert!(h.is_empty());
        // Nothing before it: released as soon as it is delivered, and not before.
        h.read_mark(90);
        assert_eq!(h.consumed(0), None);
        assert_eq!(h.mark_delivered(), Some(90));
        assert!(h.is_empty());
    }

    #[test]
    fn the_fallback_takes_empty_frames_behind_the_last_one_released() {
        let mut h = Held::new();
        h.read(16, 2);
        h.read(24, 0);
        h.read(48, 2);
        assert_eq!(h.release_early(|_| true), Some((24, 2)));
        assert_eq!(
            h.release_early(|_| false),
            Some((48, 2)),
            "until none is left"
        );
        assert!(h.is_empty());
        assert_eq!(h.consumed(3), None);
        assert_eq!(h.early, 1);
    }
}
