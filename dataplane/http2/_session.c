/* dataplane.http2._session: the server side of one HTTP/2 connection on libnghttp2 (sans-IO).
 *
 * Why: framing, HPACK, stream states and flow control in the pure-Python h2 library cost most of the
 * data-plane CPU of an HTTP/2 stream (issue 13: ~170 us per 1 KiB GET against HAProxy's ~10). nghttp2
 * (the C library of curl and nghttpd) does the same natively. ``Session`` wraps one
 * ``nghttp2_session`` with ``mem_recv``/``mem_send``: no I/O of its own, one Python call per read
 * (``receive`` returns the events as tuples) and one per write burst (``send``).
 *
 * Response bodies: ``write`` appends to a per-stream C buffer that a data provider serves, so nghttp2
 * itself keeps both flow-control windows and the frame size (NGHTTP2_ERR_DEFERRED while the buffer is
 * empty, ``nghttp2_session_resume_data`` when more comes). Request bodies: the connection window is
 * credited at once on receipt, the stream's only when Python calls ``consume`` (automatic WINDOW_UPDATE
 * is off), so an upload the engine paused holds its own stream's window but never the connection's.
 *
 * Events (first item is the kind):
 *   (REQUEST, sid, fields | None, end_stream)  fields: list of (name, value) bytes; None: over the size cap
 *   (DATA, sid, bytes)                         request body (consume(sid, len) reopens the stream window)
 *   (END, sid)                                 the client ended its side (DATA or trailers END_STREAM)
 *   (CLOSED, sid, error_code, peer_reset)      the stream is gone (its buffer freed)
 *   (GOAWAY, error_code, last_stream_id)
 *   (SETTINGS,)                                a SETTINGS frame from the peer (not an ACK)
 *
 * Memory: a stream's buffer and fields are freed when nghttp2 closes it (or with the session). Every
 * allocation failure becomes MemoryError; the object stays usable after any method raised.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <string.h>

/* Newer than some libnghttp2 builds (upstream 1.57 and 1.61; Debian 12's 1.52 has them backported): weak, so
 * the extension also loads where they are missing — there nghttp2 has no such limits to raise. */
extern void nghttp2_option_set_max_continuations(nghttp2_option *option, size_t val) __attribute__((weak));
extern void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option *option, uint64_t burst,
                                                       uint64_t rate) __attribute__((weak));

enum { EV_REQUEST, EV_DATA, EV_END, EV_CLOSED, EV_GOAWAY, EV_SETTINGS };

#define SID_WINDOW 1024 /* client stream ids remembered as opened or skipped (a bit each) */

typedef struct Stream {
    struct Stream *prev, *next; /* the session's list (freed with it) */
    int32_t sid;
    char *buf;
    size_t start, end, cap;
    PyObject *fields;   /* request fields being collected (a list), then handed over */
    PyObject *trailers; /* response trailers to send after the buffer (a list), or NULL */
    size_t header_bytes;
    unsigned eof : 1;        /* no more write() after the buffer: END_STREAM (or trailers) */
    unsigned oversize : 1;   /* the request's fields exceeded max_header_list_size */
    unsigned peer_reset : 1; /* an RST_STREAM came from the client */
} Stream;

typedef struct {
    PyObject_HEAD
    nghttp2_session *session;
    PyObject *events;  /* collected by callbacks; handed over by receive()/send() */
    Stream *streams;   /* all live Stream structs */
    size_t max_header_list;
    size_t buffered;   /* bytes in all stream buffers */
    int failed;        /* a callback raised a Python exception */
    int32_t max_sid;   /* the highest client stream id a HEADERS frame opened */
    uint64_t used[SID_WINDOW / 64]; /* which of the last SID_WINDOW odd ids below it were opened */
} SessionObject;

static PyObject *SessionError;

/* --- helpers -------------------------------------------------------------------------------- */

static void
stream_free(SessionObject *self, Stream *st)
{
    if (st->prev)
        st->prev->next = st->next;
    else
        self->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    self->buffered -= st->end - st->start;
    PyMem_Free(st->buf);
    Py_XDECREF(st->fields);
    Py_XDECREF(st->trailers);
    PyMem_Free(st);
}

static Stream *
get_stream(SessionObject *self, int32_t sid)
{
    if (sid <= 0)
        return NULL;
    return (Stream *)nghttp2_session_get_stream_user_data(self->session, sid);
}

/* Append an event built by Py_BuildValue; a failure marks the session (the callback then fails). */
static int
emit(SessionObject *self, PyObject *event)
{
    if (event == NULL) {
        self->failed = 1;
        return -1;
    }
    if (self->events == NULL) {
        self->events = PyList_New(0);
        if (self->events == NULL) {
            Py_DECREF(event);
            self->failed = 1;
            return -1;
        }
    }
    int rv = PyList_Append(self->events, event);
    Py_DECREF(event);
    if (rv < 0)
        self->failed = 1;
    return rv;
}

static PyObject *
take_events(SessionObject *self)
{
    PyObject *events = self->events;
    self->events = NULL;
    return events != NULL ? events : PyList_New(0);
}

/* fields (a list of (bytes, bytes)) as an nghttp2_nv array (PyMem; the caller frees it). nghttp2 copies
 * names and values when a frame is submitted, so the array only lives through that call. */
static nghttp2_nv *
make_nva(PyObject *fields, size_t *count)
{
    if (!PyList_Check(fields)) {
        PyErr_SetString(PyExc_TypeError, "fields must be a list of (bytes, bytes)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(fields);
    nghttp2_nv *nva = PyMem_New(nghttp2_nv, n > 0 ? (size_t)n : 1);
    if (nva == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(fields, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
            PyMem_Free(nva);
            PyErr_SetString(PyExc_TypeError, "fields must be a list of (bytes, bytes)");
            return NULL;
        }
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        nva[i].name = (uint8_t *)PyBytes_AS_STRING(name);
        nva[i].namelen = (size_t)PyBytes_GET_SIZE(name);
        nva[i].value = (uint8_t *)PyBytes_AS_STRING(value);
        nva[i].valuelen = (size_t)PyBytes_GET_SIZE(value);
        nva[i].flags = NGHTTP2_NV_FLAG_NONE;
    }
    *count = (size_t)n;
    return nva;
}

/* A negative nghttp2 return from an API call: NOMEM is MemoryError, anything else SessionError. */
static PyObject *
ng_error(int rv)
{
    if (rv == NGHTTP2_ERR_NOMEM)
        return PyErr_NoMemory();
    PyErr_Format(SessionError, "nghttp2: %s", nghttp2_strerror(rv));
    return NULL;
}

/* --- nghttp2 callbacks ------------------------------------------------------------------------ */

static int
on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    SessionObject *self = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    Stream *st = PyMem_Calloc(1, sizeof(Stream));
    if (st == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->fields = PyList_New(0);
    if (st->fields == NULL) {
        PyMem_Free(st);
        self->failed = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    st->sid = frame->hd.stream_id;
    st->next = self->streams;
    if (st->next)
        st->next->prev = st;
    self->streams = st;
    if (nghttp2_session_set_stream_user_data(session, st->sid, st) != 0) {
        stream_free(self, st);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static void
mark_sid(SessionObject *self, int32_t sid, int used)
{
    uint32_t i = ((uint32_t)sid >> 1) % SID_WINDOW;
    uint64_t bit = (uint64_t)1 << (i % 64);
    if (used)
        self->used[i / 64] |= bit;
    else
        self->used[i / 64] &= ~bit;
}

/* RFC 9113 5.1.1: a HEADERS frame on a client stream id below the highest one opened, that the client skipped
 * (never opened), is a connection error PROTOCOL_ERROR. nghttp2 ignores it (it cannot tell skipped ids from
 * closed streams it forgot); the last SID_WINDOW ids are remembered here to tell them apart. Older ids and
 * closed streams are left to nghttp2 (a trailer racing our RST_STREAM is not an error). */
static int
on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *user_data)
{
    SessionObject *self = user_data;
    int32_t sid = hd->stream_id;
    if (hd->type != NGHTTP2_HEADERS || sid <= 0 || !(sid & 1))
        return 0;
    if (sid > self->max_sid) {
        int32_t from = self->max_sid + 2;
        if (sid - from >= 2 * SID_WINDOW)
            from = sid - 2 * (SID_WINDOW - 1);
        for (int32_t skipped = from; skipped < sid; skipped += 2)
            mark_sid(self, skipped, 0);
        mark_sid(self, sid, 1);
        self->max_sid = sid;
        return 0;
    }
    if (self->max_sid - sid < 2 * SID_WINDOW) {
        uint32_t i = ((uint32_t)sid >> 1) % SID_WINDOW;
        if (!(self->used[i / 64] & ((uint64_t)1 << (i % 64)))) {
            int rv = nghttp2_session_terminate_session(session, NGHTTP2_PROTOCOL_ERROR);
            if (rv != 0 && nghttp2_is_fatal(rv))
                return rv;
        }
    }
    return 0;
}

static int
on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
          const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    (void)flags;
    SessionObject *self = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers from the client: not forwarded */
    Stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st == NULL || st->oversize)
        return 0;
    st->header_bytes += namelen + valuelen + 32; /* RFC 9113 6.5.2's accounting */
    if (st->header_bytes > self->max_header_list) {
        st->oversize = 1; /* answered 431 by the caller; the block is still decoded (HPACK state) */
        Py_CLEAR(st->fields);
        return 0;
    }
    PyObject *field = Py_BuildValue("(y#y#)", name, (Py_ssize_t)namelen, value, (Py_ssize_t)valuelen);
    if (field == NULL || PyList_Append(st->fields, field) < 0) {
        Py_XDECREF(field);
        self->failed = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    Py_DECREF(field);
    return 0;
}

static int
on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    SessionObject *self = user_data;
    int32_t sid = frame->hd.stream_id;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            Stream *st = nghttp2_session_get_stream_user_data(session, sid);
            if (st == NULL)
                return 0;
            PyObject *fields = st->fields != NULL ? st->fields : Py_None;
            int rv = emit(self, Py_BuildValue("(iiOO)", EV_REQUEST, sid, fields, end ? Py_True : Py_False));
            Py_CLEAR(st->fields);
            return rv < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
        }
        /* trailers end the request like DATA does */
        __attribute__((fallthrough));
    case NGHTTP2_DATA:
        if (end && emit(self, Py_BuildValue("(ii)", EV_END, sid)) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
    case NGHTTP2_RST_STREAM: {
        Stream *st = get_stream(self, sid);
        if (st != NULL)
            st->peer_reset = 1;
        return 0;
    }
    case NGHTTP2_GOAWAY:
        return emit(self, Py_BuildValue("(iIi)", EV_GOAWAY, frame->goaway.error_code,
                                        frame->goaway.last_stream_id)) < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && emit(self, Py_BuildValue("(i)", EV_SETTINGS)) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
    default:
        return 0;
    }
}

static int
on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
              void *user_data)
{
    (void)flags;
    SessionObject *self = user_data;
    /* The connection window is credited at once: a paused stream holds only its own window. */
    int rv = nghttp2_session_consume_connection(session, len);
    if (rv != 0 && nghttp2_is_fatal(rv))
        return rv;
    if (nghttp2_session_get_stream_user_data(session, sid) == NULL)
        return 0;
    if (emit(self, Py_BuildValue("(iiy#)", EV_DATA, sid, data, (Py_ssize_t)len)) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static int
on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)user_data;
    uint8_t type = frame->hd.type;
    if ((type == NGHTTP2_HEADERS || type == NGHTTP2_DATA) && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) == 0) {
        /* The response is complete before the request: the rest of the request is refused (RFC 9113 8.1). */
        int rv = nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
        if (rv != 0 && nghttp2_is_fatal(rv))
            return rv;
    }
    return 0;
}

static int
on_stream_close(nghttp2_session *session, int32_t sid, uint32_t error_code, void *user_data)
{
    SessionObject *self = user_data;
    Stream *st = nghttp2_session_get_stream_user_data(session, sid);
    if (st == NULL)
        return 0; /* refused or ignored before we saw it */
    int peer = st->peer_reset;
    nghttp2_session_set_stream_user_data(session, sid, NULL);
    stream_free(self, st);
    if (emit(self, Py_BuildValue("(iiIO)", EV_CLOSED, sid, error_code, peer ? Py_True : Py_False)) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static int
submit_trailers(SessionObject *self, Stream *st)
{
    size_t n;
    nghttp2_nv *nva = make_nva(st->trailers, &n);
    if (nva == NULL) {
        self->failed = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    int rv = nghttp2_submit_trailer(self->session, st->sid, nva, n);
    PyMem_Free(nva);
    Py_CLEAR(st->trailers);
    return rv;
}

static ssize_t
read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length, uint32_t *data_flags,
          nghttp2_data_source *source, void *user_data)
{
    (void)session;
    (void)sid;
    SessionObject *self = user_data;
    Stream *st = source->ptr;
    size_t avail = st->end - st->start;
    size_t n = avail < length ? avail : length;
    if (n == 0 && !st->eof)
        return NGHTTP2_ERR_DEFERRED;
    memcpy(buf, st->buf + st->start, n);
    st->start += n;
    self->buffered -= n;
    if (st->start == st->end) {
        st->start = st->end = 0;
        if (st->eof) {
            *data_flags |= NGHTTP2_DATA_FLAG_EOF;
            if (st->trailers != NULL) {
                *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                int rv = submit_trailers(self, st);
                if (rv != 0)
                    return rv == NGHTTP2_ERR_CALLBACK_FAILURE ? rv : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            }
        }
    }
    return (ssize_t)n;
}

/* --- the Session type -------------------------------------------------------------------------- */

static int
Session_init(SessionObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_concurrent_streams", "max_header_list_size", "header_table_size",
                             "initial_window_size", "connection_window", NULL};
    unsigned int max_streams, max_header_list, table_size, window, conn_window;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IIIII", kwlist, &max_streams, &max_header_list, &table_size,
                                     &window, &conn_window))
        return -1;
    if (self->session != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Session already initialised");
        return -1;
    }
    if (window > NGHTTP2_MAX_WINDOW_SIZE || conn_window > NGHTTP2_MAX_WINDOW_SIZE) {
        PyErr_SetString(PyExc_ValueError, "window too large");
        return -1;
    }
    self->max_header_list = max_header_list;
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        PyErr_NoMemory();
        return -1;
    }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* The flood guard in front (guard.py) owns the configurable limits and answers GOAWAY ENHANCE_YOUR_CALM
     * with a metric: nghttp2's own, lower defaults (8 CONTINUATION frames, 1000 resets then 33/s) would end
     * the connection first and silently. Its limits stay as a backstop far above the guard's. */
    if (nghttp2_option_set_max_continuations != NULL) {
        nghttp2_option_set_max_continuations(opt, 4096);
    }
    if (nghttp2_option_set_stream_reset_rate_limit != NULL) {
        nghttp2_option_set_stream_reset_rate_limit(opt, 1000000, 100000);
    }
    /* Closed streams stay known (nghttp2 keeps up to max_concurrent_streams of them) and RFC 7540 PRIORITY
     * frames are still validated: frames on a closed stream and a self-dependency are then the errors
     * RFC 9113 5.1 and 5.3.1 ask for (h2spec 5.1/8-12, 5.3.1/2, 6.3/1). PRIORITY has no other effect. */
    int rv = nghttp2_session_server_new2(&self->session, cbs, self, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) {
        self->session = NULL;
        ng_error(rv);
        return -1;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, max_header_list},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, table_size},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    rv = nghttp2_submit_settings(self->session, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    if (rv == 0 && conn_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
        rv = nghttp2_session_set_local_window_size(self->session, NGHTTP2_FLAG_NONE, 0, (int32_t)conn_window);
    if (rv != 0) {
        ng_error(rv);
        return -1;
    }
    return 0;
}

static void
Session_dealloc(SessionObject *self)
{
    if (self->session != NULL)
        nghttp2_session_del(self->session); /* calls no stream-close callbacks */
    while (self->streams != NULL)
        stream_free(self, self->streams);
    Py_CLEAR(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define REQUIRE_SESSION(self)                                                                             \
    do {                                                                                                  \
        if ((self)->session == NULL) {                                                                    \
            PyErr_SetString(PyExc_RuntimeError, "Session not initialised");                               \
            return NULL;                                                                                  \
        }                                                                                                 \
    } while (0)

/* Finish a call that ran callbacks: a Python error they raised wins, then nghttp2's. */
static PyObject *
after_callbacks(SessionObject *self, int rv)
{
    if (self->failed) {
        self->failed = 0;
        Py_CLEAR(self->events);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return NULL;
    }
    if (rv < 0) {
        Py_CLEAR(self->events);
        return ng_error(rv);
    }
    return take_events(self);
}

PyDoc_STRVAR(receive_doc, "receive(data) -> list of events\n\n"
                          "Feed bytes from the client. SessionError: a connection error (a GOAWAY is queued "
                          "unless the bytes were not HTTP/2 at all): send() it, then close.");

static PyObject *
Session_receive(SessionObject *self, PyObject *arg)
{
    REQUIRE_SESSION(self);
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    ssize_t rv = nghttp2_session_mem_recv(self->session, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return after_callbacks(self, rv < 0 ? (int)rv : 0);
}

PyDoc_STRVAR(send_doc, "send() -> (bytes, events)\n\n"
                       "Everything nghttp2 has to send now (the windows admit), and the events sending "
                       "caused (streams closed).");

static PyObject *
Session_send(SessionObject *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_SESSION(self);
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(self->session, &data);
    PyObject *out;
    if (n <= 0) {
        out = PyBytes_FromStringAndSize(NULL, 0);
    } else {
        /* Usually one chunk; more are gathered into a growing buffer. */
        char *acc = NULL;
        size_t size = 0, cap = 0;
        while (n > 0) {
            if (size + (size_t)n > cap) {
                size_t want = cap ? cap * 2 : 16384;
                while (want < size + (size_t)n)
                    want *= 2;
                char *grown = PyMem_Realloc(acc, want);
                if (grown == NULL) {
                    PyMem_Free(acc);
                    Py_CLEAR(self->events);
                    return PyErr_NoMemory();
                }
                acc = grown;
                cap = want;
            }
            memcpy(acc + size, data, (size_t)n);
            size += (size_t)n;
            n = nghttp2_session_mem_send(self->session, &data);
        }
        out = PyBytes_FromStringAndSize(acc, (Py_ssize_t)size);
        PyMem_Free(acc);
    }
    if (out == NULL) {
        Py_CLEAR(self->events);
        return NULL;
    }
    PyObject *events = after_callbacks(self, n < 0 ? (int)n : 0);
    if (events == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, out, events);
    Py_DECREF(out);
    Py_DECREF(events);
    return result;
}

/* Submit a response/headers/trailers call: False when the stream is gone, SessionError otherwise. */
static PyObject *
submit_result(int rv)
{
    if (rv == 0)
        Py_RETURN_TRUE;
    if (rv == NGHTTP2_ERR_NOMEM)
        return PyErr_NoMemory();
    Py_RETURN_FALSE;
}

PyDoc_STRVAR(respond_doc, "respond(sid, fields, end_stream) -> bool\n\n"
                          "The final response HEADERS; without end_stream the body follows by write(). "
                          "False: the stream is gone.");

static PyObject *
Session_respond(SessionObject *self, PyObject *args)
{
    REQUIRE_SESSION(self);
    int sid, end;
    PyObject *fields;
    if (!PyArg_ParseTuple(args, "iOp", &sid, &fields, &end))
        return NULL;
    Stream *st = get_stream(self, sid);
    if (st == NULL)
        Py_RETURN_FALSE;
    size_t n;
    nghttp2_nv *nva = make_nva(fields, &n);
    if (nva == NULL)
        return NULL;
    int rv;
    if (end) {
        rv = nghttp2_submit_response(self->session, sid, nva, n, NULL);
    } else {
        nghttp2_data_provider prd;
        prd.source.ptr = st;
        prd.read_callback = read_body;
        rv = nghttp2_submit_response(self->session, sid, nva, n, &prd);
    }
    PyMem_Free(nva);
    return submit_result(rv);
}

PyDoc_STRVAR(info_doc, "info(sid, fields) -> bool\n\nAn interim (1xx) response HEADERS.");

static PyObject *
Session_info(SessionObject *self, PyObject *args)
{
    REQUIRE_SESSION(self);
    int sid;
    PyObject *fields;
    if (!PyArg_ParseTuple(args, "iO", &sid, &fields))
        return NULL;
    if (get_stream(self, sid) == NULL)
        Py_RETURN_FALSE;
    size_t n;
    nghttp2_nv *nva = make_nva(fields, &n);
    if (nva == NULL)
        return NULL;
    int rv = nghttp2_submit_headers(self->session, NGHTTP2_FLAG_NONE, sid, NULL, nva, n, NULL);
    PyMem_Free(nva);
    return submit_result(rv);
}

PyDoc_STRVAR(write_doc, "write(sid, data, end_stream) -> int\n\n"
                        "Append response body bytes (after respond(..., False)); returns the stream's unsent "
                        "bytes, -1 when the stream is gone.");

static PyObject *
Session_write(SessionObject *self, PyObject *args)
{
    REQUIRE_SESSION(self);
    int sid, end;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "iy*p", &sid, &view, &end))
        return NULL;
    Stream *st = get_stream(self, sid);
    if (st == NULL || st->eof) {
        PyBuffer_Release(&view);
        return PyLong_FromLong(-1);
    }
    size_t len = (size_t)view.len;
    if (len > 0) {
        if (st->end + len > st->cap) {
            size_t used = st->end - st->start;
            if (st->start > 0 && used + len <= st->cap) {
                memmove(st->buf, st->buf + st->start, used);
            } else {
                size_t want = st->cap ? st->cap : 4096;
                while (want < used + len)
                    want *= 2;
                char *grown = PyMem_Malloc(want);
                if (grown == NULL) {
                    PyBuffer_Release(&view);
                    return PyErr_NoMemory();
                }
                if (used)
                    memcpy(grown, st->buf + st->start, used);
                PyMem_Free(st->buf);
                st->buf = grown;
                st->cap = want;
            }
            st->start = 0;
            st->end = used;
        }
        memcpy(st->buf + st->end, view.buf, len);
        st->end += len;
        self->buffered += len;
    }
    PyBuffer_Release(&view);
    if (end)
        st->eof = 1;
    nghttp2_session_resume_data(self->session, sid); /* an error: not deferred, nothing to do */
    return PyLong_FromSize_t(st->end - st->start);
}

PyDoc_STRVAR(trailers_doc, "trailers(sid, fields) -> bool\n\n"
                           "End the response body with trailing HEADERS (END_STREAM) once the buffer is sent.");

static PyObject *
Session_trailers(SessionObject *self, PyObject *args)
{
    REQUIRE_SESSION(self);
    int sid;
    PyObject *fields;
    if (!PyArg_ParseTuple(args, "iO!", &sid, &PyList_Type, &fields))
        return NULL;
    Stream *st = get_stream(self, sid);
    if (st == NULL || st->eof)
        Py_RETURN_FALSE;
    size_t n;
    nghttp2_nv *nva = make_nva(fields, &n); /* checked now, converted again when sent */
    if (nva == NULL)
        return NULL;
    PyMem_Free(nva);
    Py_INCREF(fields);
    Py_XSETREF(st->trailers, fields);
    st->eof = 1;
    nghttp2_session_resume_data(self->session, sid);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(reset_doc, "reset(sid, error_code)\n\nRST_STREAM from us.");

static PyObject *
Session_reset(SessionObject *self, PyObject *args)
{
    REQUIRE_SESSION(self);
    int sid;
    unsigned int code;
    if (!PyArg_ParseTuple(args, "iI", &sid, &code))
        return NULL;
    int rv = nghttp2_submit_rst_stream(self->session, NGHTTP2_FLAG_NONE, sid, code);
    if (rv == NGHTTP2_ERR_NOMEM)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pending_doc, "pending(sid) -> int\n\nThe stream's response bytes not yet sent (0 when gone).");

static PyObject *
Session_pending(SessionObject *self, PyObject *arg)
{
    REQUIRE_SESSION(self);
    long sid = PyLong_AsLong(arg);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    Stream *st = sid > 0 && sid <= INT32_MAX ? get_stream(self, (int32_t)sid) : NULL;
    return PyLong_FromSize_t(st != NULL ? st->end - st->start : 0);
}

PyDoc_STRVAR(consume_doc, "consume(sid, n)\n\nThe engine took n request-body bytes: reopen the stream window.");

static PyObject *
Session_consume(SessionObject *self, PyObject *args)
{
    REQUIRE_SESSION(self);
    int sid;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "in", &sid, &n))
        return NULL;
    if (n > 0 && sid > 0) {
        int rv = nghttp2_session_consume_stream(self->session, sid, (size_t)n);
        if (rv == NGHTTP2_ERR_NOMEM)
            return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(goaway_doc, "goaway(error_code, last_stream_id=-1)\n\n"
                         "GOAWAY (last_stream_id -1: the last stream processed); open streams below it finish.");

static PyObject *
Session_goaway(SessionObject *self, PyObject *args)
{
    REQUIRE_SESSION(self);
    unsigned int code;
    int last = -1;
    if (!PyArg_ParseTuple(args, "I|i", &code, &last))
        return NULL;
    if (last < 0)
        last = nghttp2_session_get_last_proc_stream_id(self->session);
    int rv = nghttp2_submit_goaway(self->session, NGHTTP2_FLAG_NONE, last, code, NULL, 0);
    if (rv != 0)
        return ng_error(rv);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(terminate_doc, "terminate(error_code)\n\nGOAWAY and nothing more after it is sent.");

static PyObject *
Session_terminate(SessionObject *self, PyObject *arg)
{
    REQUIRE_SESSION(self);
    unsigned long code = PyLong_AsUnsignedLong(arg);
    if (code == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    int rv = nghttp2_session_terminate_session(self->session, (uint32_t)code);
    if (rv != 0 && rv != NGHTTP2_ERR_INVALID_STATE)
        return ng_error(rv);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(shutdown_doc, "shutdown_notice()\n\nGOAWAY with the largest stream id: a graceful drain's first step.");

static PyObject *
Session_shutdown_notice(SessionObject *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_SESSION(self);
    int rv = nghttp2_submit_shutdown_notice(self->session);
    if (rv != 0 && rv != NGHTTP2_ERR_INVALID_STATE)
        return ng_error(rv);
    Py_RETURN_NONE;
}

static PyObject *
Session_get_last_stream_id(SessionObject *self, void *closure)
{
    (void)closure;
    REQUIRE_SESSION(self);
    return PyLong_FromLong(nghttp2_session_get_last_proc_stream_id(self->session));
}

static PyObject *
Session_get_want_io(SessionObject *self, void *closure)
{
    (void)closure;
    REQUIRE_SESSION(self);
    return PyBool_FromLong(nghttp2_session_want_read(self->session) || nghttp2_session_want_write(self->session));
}

static PyObject *
Session_get_buffered(SessionObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(self->buffered);
}

static PyMethodDef Session_methods[] = {
    {"receive", (PyCFunction)Session_receive, METH_O, receive_doc},
    {"send", (PyCFunction)Session_send, METH_NOARGS, send_doc},
    {"respond", (PyCFunction)Session_respond, METH_VARARGS, respond_doc},
    {"info", (PyCFunction)Session_info, METH_VARARGS, info_doc},
    {"write", (PyCFunction)Session_write, METH_VARARGS, write_doc},
    {"trailers", (PyCFunction)Session_trailers, METH_VARARGS, trailers_doc},
    {"reset", (PyCFunction)Session_reset, METH_VARARGS, reset_doc},
    {"pending", (PyCFunction)Session_pending, METH_O, pending_doc},
    {"consume", (PyCFunction)Session_consume, METH_VARARGS, consume_doc},
    {"goaway", (PyCFunction)Session_goaway, METH_VARARGS, goaway_doc},
    {"terminate", (PyCFunction)Session_terminate, METH_O, terminate_doc},
    {"shutdown_notice", (PyCFunction)Session_shutdown_notice, METH_NOARGS, shutdown_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Session_getset[] = {
    {"last_stream_id", (getter)Session_get_last_stream_id, NULL, "the highest client stream id processed", NULL},
    {"want_io", (getter)Session_get_want_io, NULL, "False once the connection is done (GOAWAY and no streams)",
     NULL},
    {"buffered", (getter)Session_get_buffered, NULL, "response bytes buffered in all streams", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dataplane.http2._session.Session",
    .tp_basicsize = sizeof(SessionObject),
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The server side of one HTTP/2 connection on libnghttp2 (see the module docstring).",
    .tp_methods = Session_methods,
    .tp_getset = Session_getset,
    .tp_init = (initproc)Session_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dataplane.http2._session",
    .m_doc = "HTTP/2 server sessions on libnghttp2.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__session(void)
{
    if (PyType_Ready(&SessionType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    SessionError = PyErr_NewException("dataplane.http2._session.SessionError", NULL, NULL);
    if (SessionError == NULL || PyModule_AddObjectRef(m, "SessionError", SessionError) < 0 ||
        PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddIntConstant(m, "REQUEST", EV_REQUEST) < 0 || PyModule_AddIntConstant(m, "DATA", EV_DATA) < 0 ||
        PyModule_AddIntConstant(m, "END", EV_END) < 0 || PyModule_AddIntConstant(m, "CLOSED", EV_CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "GOAWAY", EV_GOAWAY) < 0 ||
        PyModule_AddIntConstant(m, "SETTINGS", EV_SETTINGS) < 0 ||
        PyModule_AddStringConstant(m, "NGHTTP2_VERSION", nghttp2_version(0)->version_str) < 0) {
        Py_XDECREF(SessionError);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
