//! One step: what the schedule promises this worker's readers, the open-loop senders (one
//! per group), the per-second progress events, and the step's report once the window has
//! drained. Kept apart from connecting and receiving: this is the send side and the clock.

use std::rc::Rc;
use std::time::Duration;

use super::{emit, instant_at, Shared};
use crate::plan::{Event, Step, StepReport};
use crate::stats::{self, hist_to_b64, new_hist, now_us};
use crate::target::make_body;

pub(super) async fn run_step(sh: &Rc<Shared>, step: Step) -> StepReport {
    let spec = &sh.spec;
    sh.st.borrow_mut().reset();
    sh.window.set((step.window_start_us, step.window_end_us));
    if step.slow_stop {
        sh.slow_stop.set(true);
    }
    // What the schedule promises this worker's readers.
    let (mut expected, mut expected_acks) = (0u64, 0u64);
    for (gi, g) in spec.layout.groups.iter().enumerate() {
        let rate = step.rate * g.share;
        if rate <= 0.0 || g.senders == 0 {
            continue;
        }
        let mut i = 0u64;
        loop {
            let t = step.sched(rate, i);
            if t >= step.window_end_us {
                break;
            }
            if t >= step.window_start_us {
                let (room, c) = g.message(i);
                expected += sh.local_members[gi][room] as u64;
                if sh.target.acks() && c % spec.workers == spec.index {
                    expected_acks += 1;
                }
            }
            i += 1;
        }
    }
    let mut tasks = Vec::new();
    for (gi, g) in spec.layout.groups.iter().enumerate() {
        let rate = step.rate * g.share;
        if rate > 0.0 && g.senders > 0 {
            tasks.push(tokio::task::spawn_local(schedule(
                sh.clone(),
                gi,
                rate,
                step.clone(),
            )));
        }
    }
    let ticker = tokio::task::spawn_local(progress(sh.clone(), step.index, step.start_us));
    tokio::time::sleep_until(instant_at(step.window_start_us)).await;
    let cpu0 = stats::self_cpu_s();
    tokio::time::sleep_until(instant_at(step.window_end_us)).await;
    let cpu1 = stats::self_cpu_s();
    let deadline = step.window_end_us + step.drain_us;
    loop {
        {
            let st = sh.st.borrow();
            if st.delivered >= expected && st.acks_window_sched >= expected_acks {
                break;
            }
        }
        if now_us() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.abort();
    }
    ticker.abort();
    let mut st = sh.st.borrow_mut();
    let closes = st.close_report();
    StepReport {
        index: step.index,
        sent: st.sent,
        expected,
        expected_acks,
        delivered: st.delivered,
        received_in_window: st.received_in_window,
        acks: st.acks,
        acks_in_window: st.acks_in_window,
        duplicates: st.duplicates,
        out_of_order: st.out_of_order,
        errors: st.errors,
        error_samples: std::mem::take(&mut st.error_samples),
        closed: closes.closed,
        close_codes: closes.close_codes,
        unexpected_closed: closes.unexpected,
        unexpected_close_codes: closes.unexpected_codes,
        cpu_s: cpu1 - cpu0,
        max_send_lag_us: st.max_lag,
        hist: st.hist.as_ref().map(hist_to_b64).unwrap_or_default(),
        ack_hist: st.ack_hist.as_ref().map(hist_to_b64).unwrap_or_default(),
    }
}

/// Open loop: message `i` is due at `start + i / rate`, whatever happened to message `i - 1`.
async fn schedule(sh: Rc<Shared>, gi: usize, rate: f64, step: Step) {
    let spec = &sh.spec;
    let g = &spec.layout.groups[gi];
    let mut buf = Vec::with_capacity(512);
    let mut i = 0u64;
    let mut burst = 0u32;
    loop {
        let t = step.sched(rate, i);
        if t >= step.window_end_us {
            break;
        }
        let (room, c) = g.message(i);
        i += 1;
        if c % spec.workers != spec.index {
            continue;
        }
        let now = now_us();
        if t > now + 100 {
            burst = 0;
            tokio::time::sleep_until(instant_at(t)).await;
        } else {
            burst += 1;
            if burst >= 64 {
                burst = 0;
                tokio::task::yield_now().await;
            }
        }
        let lag = now_us().saturating_sub(t);
        let counter = ((step.index as u64) << 40) | g.counter(i - 1);
        let body = make_body(t, c, counter, spec.body_bytes);
        let cid = format!("{}-{c}-{counter}", spec.run_id);
        buf.clear();
        sh.target
            .encode_send(&mut buf, &sh.room_names[gi][room], &cid, t, &body);
        let ok = sh
            .senders
            .borrow()
            .get(&c)
            .map(|tx| tx.send(buf.clone()).is_ok())
            .unwrap_or(false);
        let mut st = sh.st.borrow_mut();
        st.max_lag = st.max_lag.max(lag);
        if ok {
            st.sent_total += 1;
            if t >= step.window_start_us {
                st.sent += 1;
            }
        }
    }
}

async fn progress(sh: Rc<Shared>, step: usize, start_us: u64) {
    let mut second = 0u64;
    loop {
        second += 1;
        tokio::time::sleep_until(instant_at(start_us + second * 1_000_000)).await;
        let ev = {
            let mut st = sh.st.borrow_mut();
            let h = st.iv_hist.replace(new_hist()).unwrap_or_else(new_hist);
            let ev = Event::Progress {
                step,
                second,
                sent: st.sent_total,
                received: st.iv_received,
                acks: st.iv_acks,
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
                closed: st.closed,
            };
            st.iv_received = 0;
            st.iv_acks = 0;
            ev
        };
        emit(&ev);
    }
}
