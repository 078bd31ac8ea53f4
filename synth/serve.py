"""`resail serve`: a local web page to paint a label map, synthesise it and edit one region at a time.

`Synthesizer` loads the run once (`LoadedRun`, synth/inference.py: snapshot, class table, label
table, search settings and the retrieval index, shared with eval and synthesize). Each "Generate"
reads the upload and runs the library call `resail synthesize` runs, `Synthesis` (synth/synthesize.py:
decompose, retrieve, compose, G), and keeps it in a `Session`, so that "resample", "choose another
match" or a variant for one region recomposes the guidance with every other region's match
unchanged (paper Fig. 5) and runs G again; a resample or variant is the label map's next redraw,
seeded as `resail synthesize --resample` seeds its own. Sessions live in a small LRU store
(`SessionStore`) keyed by the id that /api/generate returns; an evicted session answers 404 and the
page generates anew. `Synthesizer` answers in the page's terms: what a request names that does not
exist is an `UploadError` with the HTTP status to answer with.

The label maps going in are read exactly as `resail synthesize --label` reads them
(the run's `Vocabulary`, labels/vocabulary.py and labels/files.py): class ids in any of the dataset's id spaces
or a colour map in its palette, `?format=auto|ids|trainids|color` (auto by default; the page sends
its own canvas as `ids`, in the dataset's label-file format). The size rule is synthesize's: any
map from 8 px to `max_side` a side, resized to the model size with nearest neighbour, with a note
in the answer when that stretches it. The downloads give the map G took, at the model size, in
either form: `label.png` as dataset ids (what synthesize reads back), `label_color.png` in the
palette. The palette offers the classes of the run's label table only (all of the dataset's for a
preset without one), and G takes the map through that table.
Uploads are checked before decoding (PNG signature, byte size, header size) so that a bad file
gets a 4xx and a message for the page, never a server error.

A run whose generator reads no guidance (SPADE, CLADE: docs/baselines.md) gets a `NoGuidance`:
nothing is retrieved, the index is never opened, the page shows no segments to edit; its G takes
SPADE's edge map (from the painted map's boundaries) and CLADE-ICPE's positional maps where it
reads them.

Every model or store access runs under one lock: the app serves one person on localhost, and
h5py handles and G are not meant to be shared between threads.
"""

from __future__ import annotations

import base64
import collections
import logging
import struct
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..artifacts import encode_png
from ..choices import LABEL_FORMATS
from ..errors import ConfigError, InputError, ResailError, StageError
from ..pipeline.guidance import SEED_MAX
from ..pipeline.labels.files import MAX_SIDE, LabelMapFile, LabelSizeError, aspect_note
from ..pipeline.store import SegmentStore
from .inference import LoadedRun
from .synthesize import Synthesis

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
THUMB_SIDE = 96


class UploadError(InputError):
    """A label-map upload the server refuses; `status` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def check_seed(seed: int | None) -> None:
    """A 400 for a seed outside 0..SEED_MAX (`resail synthesize --seed`'s range)."""
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise UploadError(f"seed={seed}: choose 0..{SEED_MAX}", status=400)


@dataclass(frozen=True)
class ServeConfig:
    work: Path
    run: str
    checkpoint: Path | None = None     # default: the run's latest snapshot
    host: str = "127.0.0.1"
    port: int = 8000
    k: int = 10                        # matches retrieved per segment
    device: str = "cpu"                # or auto, cuda, cuda:N
    max_sessions: int = 16             # label maps kept for region edits (LRU)
    max_upload_bytes: int = 8 << 20
    max_side: int = MAX_SIDE           # label maps larger than this on a side are refused
    max_variants: int = 8

    def __post_init__(self):
        if self.k < 1:
            raise ConfigError("k", f"k {self.k}: must be at least 1")
        if not 1 <= self.port <= 65535:
            raise ConfigError("port", f"port {self.port}: choose 1..65535")
        if self.max_sessions < 1:
            raise ConfigError("max_sessions", f"max_sessions {self.max_sessions}: must be at least 1")


@dataclass
class Session:
    """One generated label map: its `Synthesis` (the current match of every segment, the pictures)
    and what the page shows beside it."""

    id: str
    synthesis: Synthesis
    read_as: str = ""                 # how the upload was read (format, and what `auto` saw)
    version: int = 0                  # renders so far: the image URLs' cache key
    variants: list[np.ndarray] = field(default_factory=list)   # chosen ranks of the last variants


class SessionStore:
    """The sessions kept for region edits, least recently used first; past `capacity` the oldest is
    dropped and its `Synthesis` closed."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def __contains__(self, sid: str) -> bool:
        return sid in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session
        while len(self._sessions) > self.capacity:
            _, old = self._sessions.popitem(last=False)
            old.synthesis.close()

    def get(self, sid: str) -> Session | None:
        """The session `sid`, now the most recently used; None when unknown or evicted."""
        s = self._sessions.get(sid)
        if s is not None:
            self._sessions.move_to_end(sid)
        return s

    def close(self) -> None:
        for s in self._sessions.values():
            s.synthesis.close()
        self._sessions.clear()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header, without decoding it; UploadError when it is not a PNG."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        raise UploadError("not a PNG file: upload a single-channel PNG of class ids", status=415)
    return struct.unpack(">II", data[16:24])


class Synthesizer:
    """The run (`LoadedRun`) and the training segments' crops, loaded once, and the sessions:
    generate and edit label maps for the page."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.run = LoadedRun.load(cfg.work, cfg.run, cfg.checkpoint, cfg.device)
        self.work = self.run.work.root
        self.size = self.run.size                          # (W, H)
        self.class_ids = self.run.labels.drawable          # the palette: the classes the run can draw
        self.colors = self.run.labels.colors(self.class_ids)
        # now: a missing or stale index fails before serving; the thumbnails' store is the index's version
        # (a run whose G reads no guidance retrieves nothing: no index needed)
        self.train = SegmentStore(self.run.open_index().work if self.run.uses_guidance else self.work, "train")
        self.train_segment_id = self.train.table["segment_id"].to_numpy()
        self.val = self._val_label_paths()
        self.sessions = SessionStore(cfg.max_sessions)
        self.lock = threading.RLock()

    def _val_label_paths(self) -> list[tuple[str, str]]:
        try:
            with SegmentStore(self.work, "val") as store:
                im = store.images
        except StageError:
            return []
        return [(i, p) for i, p, s in zip(im["image_id"].to_pylist(), im["label_path"].to_pylist(),
                                          im["status"].to_pylist()) if s == "ok" and p]

    def close(self) -> None:
        with self.lock:
            self.sessions.close()
            self.train.close()

    def info(self) -> dict:
        W, H = self.size
        labels, dataset = self.run.labels, self.run.labels.dataset
        return {"run": self.cfg.run, "snapshot": self.run.snapshot.name, "dataset": dataset, "width": W, "height": H,
                "k": self.cfg.k, "label_format": "cocostuff" if dataset == "cocostuff" else "native",
                "label_formats": [f for f in LABEL_FORMATS if f != "trainids" or dataset == "cityscapes"],
                "max_upload_bytes": self.cfg.max_upload_bytes, "max_variants": self.cfg.max_variants,
                "classes": [{"id": c, "name": labels.names.get(c, str(c)), "is_thing": labels.is_thing.get(c, False),
                             "color": list(self.colors[c])} for c in self.class_ids],
                "val": [i for i, _ in self.val]}

    # ---------------------------------------------------------------- label maps in

    def read_label_png(self, data: bytes, fmt: str = "auto") -> LabelMapFile:
        """Uploaded PNG bytes → H×W native ids, checked: PNG, byte size, side limits (from the
        header, before decoding), format (`fmt`, see labels/files.py), class ids."""
        if len(data) > self.cfg.max_upload_bytes:
            raise UploadError(f"upload of {len(data):,} bytes is over the {self.cfg.max_upload_bytes:,}-byte limit",
                              status=413)
        png_size(data)
        where = "uploaded label map"
        try:
            read = self.run.labels.read(data, fmt, where=where, max_side=self.cfg.max_side)
            self.run.labels.check(read.label_map, where)
        except LabelSizeError as e:
            raise UploadError(str(e), status=413 if e.too_large else 422) from None
        except InputError as e:
            raise UploadError(str(e)) from None
        return read

    def editor_label_map(self, label_map: np.ndarray, read: LabelMapFile | None = None) -> dict:
        """A label map for the page's editor: native ids at the model size, base64 little-endian
        uint16; with how an upload was read and whether the model size stretched it."""
        W, H = self.size
        small = self.run.at_size(label_map).astype("<u2")
        out = {"width": W, "height": H, "ids": base64.b64encode(small.tobytes()).decode()}
        if read is not None:
            note = aspect_note(label_map.shape, self.size, "uploaded label map")
            out.update(read_as=f"{read.format}: {read.how}", notes=[note] if note else [])
        return out

    def val_label_map(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self.val):
            raise UploadError(f"val label map {i} does not exist (0..{len(self.val) - 1})", status=404)
        return self.run.labels.read(Path(self.val[i][1]), "ids").label_map

    # ---------------------------------------------------------------- synthesis

    def generate(self, data: bytes, seed: int | None = None, k: int | None = None, fmt: str = "auto") -> Session:
        """An uploaded label PNG (read as `fmt`) synthesised as `resail synthesize` does it; a new session."""
        k = self.cfg.k if k is None else k
        if not 1 <= k <= 1000:
            raise UploadError(f"k={k}: choose 1..1000")
        check_seed(seed)
        with self.lock:
            read = self.read_label_png(data, fmt)
            synthesis = Synthesis(self.run, read.label_map, k=k, seed=seed, where="uploaded label map")
            s = Session(uuid.uuid4().hex[:16], synthesis, read_as=f"{read.format}: {read.how}")
            self._render(s)
            self.sessions.add(s)
            return s

    def _render(self, s: Session) -> None:
        s.synthesis.render()
        s.version += 1

    def session(self, sid: str) -> Session:
        with self.lock:
            s = self.sessions.get(sid)
            if s is None:
                raise UploadError(f"session {sid!r} is unknown or expired; press Generate again", status=404)
            return s

    def _segment_index(self, s: Session, i: int) -> int:
        n = len(s.synthesis.state.segments)
        if not 0 <= i < n:
            raise UploadError(f"segment {i} is out of range 0..{n - 1}", status=404)
        return i

    def resample(self, sid: str, segment: int, seed: int | None = None) -> Session:
        """Draw another match for one segment; every other segment keeps its match."""
        check_seed(seed)
        with self.lock:
            s = self.session(sid)
            s.synthesis.redraw([self._segment_index(s, segment)], seed)
            self._render(s)
            return s

    def choose(self, sid: str, segment: int, rank: int) -> Session:
        """Paste the match of rank `rank` into one segment; every other segment keeps its match."""
        with self.lock:
            s = self.session(sid)
            s.synthesis.choose(self._segment_index(s, segment), rank)  # no such rank: an InputError, a 422
            self._render(s)
            return s

    def variants(self, sid: str, n: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
        """N outputs, each with every segment's match drawn afresh; the session keeps its own."""
        if not 1 <= n <= self.cfg.max_variants:
            raise UploadError(f"n={n}: choose 1..{self.cfg.max_variants} variants")
        with self.lock:
            s = self.session(sid)
            t0 = time.perf_counter()
            guidance, images, s.variants = s.synthesis.variants(n)
            return list(zip(guidance, images)), round(1000 * (time.perf_counter() - t0), 1)

    def adopt_variant(self, sid: str, j: int) -> Session:
        """Make variant `j` of the last "Variants" the session's current choice."""
        with self.lock:
            s = self.session(sid)
            if not 0 <= j < len(s.variants):
                raise UploadError(f"variant {j} does not exist; press Variants first", status=404)
            s.synthesis.adopt(s.variants[j])
            self._render(s)
            return s

    # ---------------------------------------------------------------- answers

    def state(self, s: Session) -> dict:
        """What the page needs after a (re)generation: segments, segment map, image URLs, timings."""
        with self.lock:
            return self._state(s)

    def _state(self, s: Session) -> dict:
        syn = s.synthesis
        segments = []
        for c in syn.choices():
            d = asdict(c)
            d["score"] = None if np.isnan(c.score) else round(c.score, 6)
            segments.append(d)
        seg_map = syn.state.segment_map
        H, W = seg_map.shape
        base = f"/api/session/{s.id}"
        return {"session": s.id, "version": s.version, "seed": syn.seed, "k": syn.k, "width": W, "height": H,
                "timings": syn.timings, "segments": segments, "read_as": s.read_as, "notes": syn.notes,
                "segment_map": base64.b64encode(seg_map.astype("<i2").tobytes()).decode(),
                "images": {name: f"{base}/{name}.png?v={s.version}" for name in ("guidance", "output", "label")}}

    def segment_info(self, sid: str, segment: int) -> dict:
        with self.lock:
            s = self.session(sid)
            i = self._segment_index(s, segment)
            g = s.synthesis.state
            c = s.synthesis.choices()[i]
            candidates = [{"rank": r, "match_id": int(m), "score": round(float(g.scores[i, r]), 6),
                           "thumb": f"/api/thumb/{int(m)}.png"} for r, m in enumerate(g.ids[i]) if m >= 0]
            return {"index": i, "class_id": c.class_id, "class_name": c.class_name, "is_thing": c.is_thing,
                    "area": c.area, "rank": c.rank, "match_id": c.match_id, "reason": c.reason,
                    "candidates": candidates}

    def image_png(self, sid: str, name: str) -> bytes:
        with self.lock:
            syn = self.session(sid).synthesis
            if name in ("label", "label_color"):  # the map G took, as dataset ids or in the palette
                fmt = "ids" if name == "label" else "color"
                return encode_png(self.run.labels.encode(syn.label_map, fmt))
            return encode_png({"guidance": syn.guidance, "output": syn.image}[name])

    def thumbnail(self, match_id: int) -> bytes:
        """A training segment's crop, the pixels outside its mask dimmed, at most THUMB_SIDE a side."""
        with self.lock:
            row = int(np.searchsorted(self.train_segment_id, match_id))
            if row >= len(self.train_segment_id) or self.train_segment_id[row] != match_id:
                raise UploadError(f"segment {match_id} is not a training segment", status=404)
            rgb, mask = self.train.crop(row)
        out = np.where(mask[..., None], rgb, (rgb.astype(np.float32) * 0.25).astype(np.uint8))
        im = Image.fromarray(np.ascontiguousarray(out))
        im.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.NEAREST if max(im.size) < THUMB_SIDE else Image.BILINEAR)
        return encode_png(np.asarray(im))


# ---------------------------------------------------------------- the web app


def create_app(synth: Synthesizer):
    """The Starlette app over a loaded `Synthesizer` (the tests drive it with its test client)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    limit = synth.cfg.max_upload_bytes

    async def body_png(request: Request) -> bytes:
        """The request body, refused early (413) when it announces or reaches more than the limit."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise UploadError(f"upload of {int(declared):,} bytes is over the {limit:,}-byte limit", status=413)
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise UploadError(f"upload is over the {limit:,}-byte limit", status=413)
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data:
            raise UploadError("empty upload: send the label map PNG as the request body", status=400)
        return data

    def int_param(request: Request, name: str, default=None):
        v = request.query_params.get(name, "")
        if v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise UploadError(f"{name}={v!r} is not an integer", status=400) from None

    async def index(request):
        return FileResponse(WEB / "index.html")

    async def info(request):
        return JSONResponse(synth.info())

    def label_format(request: Request) -> str:
        fmt = request.query_params.get("format", "") or "auto"
        if fmt not in LABEL_FORMATS:
            raise UploadError(f"format={fmt!r}: choose one of {', '.join(LABEL_FORMATS)}", status=400)
        return fmt

    async def label(request):
        data = await body_png(request)
        read = await run_in_threadpool(synth.read_label_png, data, label_format(request))
        return JSONResponse(synth.editor_label_map(read.label_map, read))

    async def val(request):
        lm = await run_in_threadpool(synth.val_label_map, request.path_params["i"])
        return JSONResponse({"image_id": synth.val[request.path_params["i"]][0], **synth.editor_label_map(lm)})

    async def generate(request):
        data = await body_png(request)
        seed, k, fmt = int_param(request, "seed"), int_param(request, "k"), label_format(request)
        return JSONResponse(await run_in_threadpool(lambda: synth.state(synth.generate(data, seed, k, fmt))))

    async def state(request):
        sid = request.path_params["sid"]
        return JSONResponse(await run_in_threadpool(lambda: synth.state(synth.session(sid))))

    async def segment(request):
        p = request.path_params
        return JSONResponse(await run_in_threadpool(synth.segment_info, p["sid"], p["i"]))

    async def resample(request):
        p = request.path_params
        seed = int_param(request, "seed")
        return JSONResponse(await run_in_threadpool(lambda: synth.state(synth.resample(p["sid"], p["i"], seed))))

    async def choose(request):
        p = request.path_params
        rank = int_param(request, "rank")
        if rank is None:
            raise UploadError("choose needs ?rank=R", status=400)
        return JSONResponse(await run_in_threadpool(lambda: synth.state(synth.choose(p["sid"], p["i"], rank))))

    async def variants(request):
        sid = request.path_params["sid"]
        out, ms = await run_in_threadpool(synth.variants, sid, int_param(request, "n", 4))
        url = "data:image/png;base64,"
        return JSONResponse({"session": sid, "variants_ms": ms, "variants": [
            {"index": j, "guidance": url + base64.b64encode(encode_png(g)).decode(),
             "output": url + base64.b64encode(encode_png(o)).decode()} for j, (g, o) in enumerate(out)]})

    async def adopt(request):
        p = request.path_params
        return JSONResponse(await run_in_threadpool(lambda: synth.state(synth.adopt_variant(p["sid"], p["j"]))))

    async def image(request):
        p = request.path_params
        if p["name"] not in ("label", "label_color", "guidance", "output"):
            raise UploadError(f"no image named {p['name']!r}: label, label_color, guidance or output", status=404)
        data = await run_in_threadpool(synth.image_png, p["sid"], p["name"])
        headers = {"Content-Disposition": f'inline; filename="resail_{p["sid"][:8]}_{p["name"]}.png"',
                   "Cache-Control": "no-store"}
        return Response(data, media_type="image/png", headers=headers)

    async def thumb(request):
        data = await run_in_threadpool(synth.thumbnail, request.path_params["m"])
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def upload_error(request, exc: UploadError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def resail_error(request, exc: ResailError):
        return JSONResponse({"error": str(exc)}, status_code=422 if isinstance(exc, InputError) else 500)

    async def server_error(request, exc: Exception):
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"server error: {type(exc).__name__}: {exc}"}, status_code=500)

    sess = "/api/session/{sid:str}"
    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/label", label, methods=["POST"]),
        Route("/api/val/{i:int}", val),
        Route("/api/generate", generate, methods=["POST"]),
        Route(sess, state),
        Route(sess + "/segment/{i:int}", segment),
        Route(sess + "/segment/{i:int}/resample", resample, methods=["POST"]),
        Route(sess + "/segment/{i:int}/choose", choose, methods=["POST"]),
        Route(sess + "/variants", variants, methods=["POST"]),
        Route(sess + "/variants/{j:int}/adopt", adopt, methods=["POST"]),
        Route(sess + "/{name:str}.png", image),
        Route("/api/thumb/{m:int}.png", thumb),
        Mount("/static", StaticFiles(directory=WEB), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={UploadError: upload_error, ResailError: resail_error,
                                                         Exception: server_error})


def check_port(host: str, port: int) -> None:
    """InputError when `host:port` cannot be listened on (taken, or not an address of this machine)."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise InputError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closing socket does not count
        try:
            s.bind(addr)
        except OSError as e:
            raise InputError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); stop what uses it "
                             "or choose another --port") from None


def serve(cfg: ServeConfig, *, ready=None, log_level: str = "warning") -> None:
    """Load the run once, call `ready()`, then serve the page until interrupted."""
    import uvicorn

    check_port(cfg.host, cfg.port)  # before the minutes of loading, and before `ready` says "open"
    synth = Synthesizer(cfg)
    try:
        log.info("serve: run %s (%s, %dx%d)", cfg.run, synth.run.snapshot.name, *synth.size)
        check_port(cfg.host, cfg.port)
        if ready is not None:
            ready()
        uvicorn.run(create_app(synth), host=cfg.host, port=cfg.port, log_level=log_level)
    finally:
        synth.close()
