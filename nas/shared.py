"""An estimator's trained state (the supernet) shared by every worker of one study, kept in the
study's own database, so that the workers share nothing but the ``--storage`` URL.

Exactly one worker trains: it claims the state by inserting its row (a primary key: the database
decides, on any machine), uploads the checkpoint after every epoch and marks it ready at the end;
the others wait and load it.  The trainer bumps a heartbeat counter every few seconds from a
thread.  A waiter that sees the counter stand still for ``stale_s`` seconds of *its own* clock
(clocks of different machines are never compared) takes the claim over with a compare-and-set on
that counter, and resumes the training from the last uploaded epoch.  So no two workers ever
score with different supernets, and a trainer killed mid-training costs one epoch, not the study.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from .interrupt import requested as stop_requested

TABLE = "plugnas_shared_state"  # beside Optuna's tables; the prefix keeps clear of its names


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class SharedState:
    """One row per (study, estimator fingerprint): owner, heartbeat, epoch, ready, checkpoint."""

    def __init__(self, url: str, key: str, beat_s: float = 5.0):
        from sqlalchemy import (Boolean, Column, Integer, LargeBinary, MetaData, String, Table,
                                create_engine, exc)

        self.key, self.beat_s, self.me = key, beat_s, owner_id()
        self.engine = create_engine(url, pool_pre_ping=True)
        meta = MetaData()
        self.t = Table(TABLE, meta, Column("key", String(255), primary_key=True), Column("owner", String(255)),
                       Column("beat", Integer, nullable=False), Column("epoch", Integer, nullable=False),
                       Column("ready", Boolean, nullable=False), Column("blob", LargeBinary))
        for attempt in range(3):  # two workers creating the table at once: one loses, then sees it
            try:
                meta.create_all(self.engine)
                break
            except exc.SQLAlchemyError:
                if attempt == 2:
                    raise
                time.sleep(0.5)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _exec(self, stmt):
        with self.engine.begin() as c:
            return c.execute(stmt)

    def claim(self) -> bool:
        """True when this process now owns the (new) row: it trains."""
        from sqlalchemy import exc

        try:
            self._exec(self.t.insert().values(key=self.key, owner=self.me, beat=0, epoch=0, ready=False))
            return True
        except exc.IntegrityError:
            return False

    def status(self):
        with self.engine.connect() as c:
            return c.execute(self.t.select().with_only_columns(
                self.t.c.owner, self.t.c.beat, self.t.c.epoch, self.t.c.ready).where(self.t.c.key == self.key)).first()

    def take_over(self, seen_beat: int) -> bool:
        """Compare-and-set on the heartbeat: only one waiter wins a stale claim."""
        t = self.t
        r = self._exec(t.update().where(t.c.key == self.key, t.c.ready.is_(False), t.c.beat == seen_beat)
                       .values(owner=self.me, beat=seen_beat + 1))
        return r.rowcount == 1

    def upload(self, data: bytes, epoch: int, ready: bool = False) -> None:
        t = self.t
        r = self._exec(t.update().where(t.c.key == self.key, t.c.owner == self.me)
                       .values(blob=data, epoch=epoch, ready=ready))
        if r.rowcount != 1:
            raise RuntimeError("another worker took over the shared supernet's training (this one stalled "
                               "longer than the others waited); this worker stops, its state is not used")

    def download(self) -> Optional[bytes]:
        with self.engine.connect() as c:
            return c.execute(self.t.select().with_only_columns(self.t.c.blob).where(self.t.c.key == self.key)).scalar()

    def start_beating(self) -> None:
        def beat():
            t = self.t
            while not self._stop.wait(self.beat_s):
                try:
                    self._exec(t.update().where(t.c.key == self.key, t.c.owner == self.me).values(beat=t.c.beat + 1))
                except Exception:  # a database hiccup: the next beat tries again
                    pass

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="plugnas-heartbeat", daemon=True)
        self._thread.start()

    def stop_beating(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        self.stop_beating()
        self.engine.dispose()


def prepare_shared(est, url: str, key: str, say: Callable[[str], None], beat_s: float, stale_s: float,
                   load_only: bool = False) -> str:
    """``est`` prepared from the state under ``key`` in the study's database (see ``share``);
    ``load_only``: never train (``nas.collect``)."""
    state = SharedState(url, key, beat_s=beat_s)
    try:
        return load_shared(est, state, say) if load_only else share(est, state, say, stale_s=stale_s)
    finally:
        state.close()


def share(est, state: SharedState, say: Callable[[str], None], stale_s: float = 60.0, poll_s: float = 1.0) -> str:
    """Prepare ``est`` from the study's shared state: train it here (and share it) or load it.
    Returns ``"trained"``, ``"resumed"`` (took over a dead trainer's claim) or ``"loaded"``."""
    local: Path = est.state_file
    if state.claim():
        return _train(est, state, local, say, "trained")
    seen, since, epoch, said = None, time.monotonic(), -1, False
    while True:
        if stop_requested():
            raise KeyboardInterrupt
        row = state.status()
        if row.ready:
            _write(local, state.download())
            est.check_folder()  # loads it: trained to the end
            say(f"loaded the shared {est.name} state that {row.owner} trained")
            return "loaded"
        if row.beat != seen:
            seen, since = row.beat, time.monotonic()
        elif time.monotonic() - since > stale_s and state.take_over(row.beat):
            say(f"{row.owner} stopped training the shared {est.name} state (no heartbeat for {stale_s:.0f} s): "
                f"this worker takes over from epoch {row.epoch}")
            blob = state.download()
            if blob:
                _write(local, blob)
            return _train(est, state, local, say, "resumed")
        if not said or row.epoch != epoch:
            say(f"waiting for the shared {est.name} state: {row.owner} trains it (epoch {row.epoch} done)")
            said, epoch = True, row.epoch
        time.sleep(poll_s)


def load_shared(est, state: SharedState, say: Callable[[str], None]) -> str:
    """The trained shared state, or a ValueError where no worker has finished training it."""
    row = state.status()
    if row is None or not row.ready:
        raise ValueError(f"the study's shared {est.name} state is not trained yet "
                         f"({'nobody trains it' if row is None else f'{row.owner} is at epoch {row.epoch}'}): "
                         "no trial has been scored")
    _write(est.state_file, state.download())
    est.check_folder()
    say(f"loaded the shared {est.name} state that {row.owner} trained")
    return "loaded"


def _train(est, state: SharedState, local: Path, say, how: str) -> str:
    state.start_beating()
    try:
        est.after_save = lambda path, epoch: state.upload(Path(path).read_bytes(), epoch)
        est.check_folder()  # a taken-over checkpoint: resume from its last epoch
        est.prepare()
        state.upload(local.read_bytes(), getattr(est, "epochs", 0), ready=True)
    finally:
        est.after_save = None
        state.stop_beating()
    say(f"{'trained' if how == 'trained' else 'finished training'} the shared {est.name} state; "
        "the study's other workers load it")
    return how


def _write(path: Path, data: Optional[bytes]) -> None:
    from .results import atomic

    if data is None:
        raise RuntimeError("the shared state row holds no checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as tmp:
        tmp.write_bytes(data)
