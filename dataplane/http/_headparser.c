/* C implementation of dataplane.http.parser.parse_request_head (the Python function is the reference).
 *
 * Why: the pure-Python head parser costs ~15 us per typical request, a large share of the proxy's
 * per-request CPU (issue 12). This does the same checks, in the same order, with the same results and
 * the same ParseError (status, reason) for every input; the Python parser stays as the fallback and
 * the oracle the fuzz test compares against (tests/unit/test_http_parser_c.py).
 *
 * What stays in Python: building the RequestHead (its class is passed in), non-canonical path
 * normalisation (the canonical fast check is here; anything else calls the Python _split_target),
 * and any call that is not the plain positional (bytes, int, int[, int]) form (delegated whole to the
 * Python function, so odd arguments behave exactly as before).
 *
 * Every read is bounded by the buffer length; no state outlives a call except the HeadParser object's
 * references to the Python callables it was built with.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>

/* Byte classes (filled once at module init; read-only afterwards). */
static unsigned char TOKEN[256];   /* [!#$%&'*+\-.^_`|~0-9A-Za-z] */
static unsigned char CTL[256];     /* [\x00-\x08\x0b\x0c\x0e-\x1f\x7f] */
static unsigned char REGNAME[256]; /* [A-Za-z0-9\-._~!$&'()*+,;=%] */
static unsigned char IPCHAR[256];  /* [0-9A-Fa-f:.] */
static unsigned char PLAIN[256];   /* [A-Za-z0-9\-._~!$&'()*+,=:@] (canonical path segment) */

static void
mark(unsigned char *table, const char *chars)
{
    for (; *chars; chars++)
        table[(unsigned char)*chars] = 1;
}

static void
init_tables(void)
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    mark(TOKEN, alnum);
    mark(TOKEN, "!#$%&'*+-.^_`|~");
    for (int c = 0; c <= 0x08; c++)
        CTL[c] = 1;
    CTL[0x0b] = CTL[0x0c] = 1;
    for (int c = 0x0e; c <= 0x1f; c++)
        CTL[c] = 1;
    CTL[0x7f] = 1;
    mark(REGNAME, alnum);
    mark(REGNAME, "-._~!$&'()*+,;=%");
    mark(IPCHAR, "0123456789ABCDEFabcdef:.");
    mark(PLAIN, alnum);
    mark(PLAIN, "-._~!$&'()*+,=:@");
}

static inline unsigned char
lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* _HOST.fullmatch: (?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})? */
static int
port_ok(const unsigned char *s, Py_ssize_t n)
{
    if (n == 0)
        return 1;
    if (s[0] != ':' || n - 1 > 5)
        return 0;
    for (Py_ssize_t i = 1; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

static int
host_ok(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    if (n > 0 && s[0] == '[') {
        Py_ssize_t j = 1;
        while (j < n && IPCHAR[s[j]])
            j++;
        if (j >= 2 && j < n && s[j] == ']' && port_ok(s + j + 1, n - j - 1))
            return 1;
    }
    while (i < n && REGNAME[s[i]])
        i++;
    return port_ok(s + i, n - i);
}

/* path._CANONICAL.fullmatch: (?:/(?!\.\.?(?:/|\Z))[plain]+)*\/? */
static int
canonical_path(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        if (s[i] != '/')
            return 0;
        i++;
        Py_ssize_t start = i;
        while (i < n && PLAIN[s[i]])
            i++;
        Py_ssize_t len = i - start;
        if (len == 0)
            return i == n;
        if (i < n && s[i] != '/')
            return 0;
        if (s[start] == '.' && (len == 1 || (len == 2 && s[start + 1] == '.')))
            return 0;
    }
    return 1;
}

static inline int
strip_ws(const unsigned char **s, Py_ssize_t *n)
{
    const unsigned char *p = *s;
    Py_ssize_t len = *n;
    while (len > 0 && (p[0] == ' ' || p[0] == '\t')) {
        p++;
        len--;
    }
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    *s = p;
    *n = len;
    return 0;
}

static inline int
eq(const unsigned char *s, Py_ssize_t n, const char *lit, Py_ssize_t litlen)
{
    return n == litlen && memcmp(s, lit, (size_t)n) == 0;
}

static inline int
eq_lower(const unsigned char *s, Py_ssize_t n, const char *lit, Py_ssize_t litlen)
{
    if (n != litlen)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower(s[i]) != (unsigned char)lit[i])
            return 0;
    return 1;
}

#define LIT(s) s, (Py_ssize_t)(sizeof(s) - 1)

/* One object layout for both parsers; a ResponseParser leaves split_target and star NULL. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fallback;     /* the Python parse_request_head / parse_response_head */
    PyObject *head_cls;     /* RequestHead / ResponseHead */
    PyObject *error_cls;    /* ParseError */
    PyObject *split_target; /* requests: _split_target(target) -> (target, path), raises ParseError */
    PyObject *empty;        /* b"" */
    PyObject *star;         /* requests: "*" */
} HeadParser;

static PyObject *
raise_parse_error(HeadParser *self, int status, PyObject *reason)
{
    if (reason == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(self->error_cls, "iO", status, reason);
    Py_DECREF(reason);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
fail(HeadParser *self, int status, const char *reason)
{
    return raise_parse_error(self, status, PyUnicode_FromString(reason));
}

enum { CT_OTHER, CT_HOST, CT_CL, CT_TE, CT_CONNECTION, CT_UPGRADE, CT_REQUEST_ID };

static int
classify(const char *name, Py_ssize_t n)
{
    switch (n) {
    case 4:
        return memcmp(name, "host", 4) == 0 ? CT_HOST : CT_OTHER;
    case 7:
        return memcmp(name, "upgrade", 7) == 0 ? CT_UPGRADE : CT_OTHER;
    case 10:
        return memcmp(name, "connection", 10) == 0 ? CT_CONNECTION : CT_OTHER;
    case 12:
        return memcmp(name, "x-request-id", 12) == 0 ? CT_REQUEST_ID : CT_OTHER;
    case 14:
        return memcmp(name, "content-length", 14) == 0 ? CT_CL : CT_OTHER;
    case 17:
        return memcmp(name, "transfer-encoding", 17) == 0 ? CT_TE : CT_OTHER;
    default:
        return CT_OTHER;
    }
}

/* --- what request and response heads share: the first line's end, the byte check, the header lines --- */

/* head.find(b"\r\n"), or -1 */
static Py_ssize_t
find_crlf(const unsigned char *h, Py_ssize_t n)
{
    const unsigned char *p = h, *end = h + n;
    while (p < end && (p = memchr(p, '\r', (size_t)(end - p))) != NULL) {
        if (p + 1 < end && p[1] == '\n')
            return p - h;
        p++;
    }
    return -1;
}

/* _check_bytes: any control byte wins over a bare CR/LF anywhere. Returns the reason, or NULL with *crlf
 * set to the number of CRLFs in the head. */
static const char *
check_bytes(const unsigned char *h, Py_ssize_t n, Py_ssize_t *crlf)
{
    int bare = 0;
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = h[i];
        if (c > 13 || c == 9) {
            if (CTL[c])
                return "control character in message head";
            continue;
        }
        if (c == '\r') {
            if (i + 1 >= n || h[i + 1] != '\n')
                bare = 1;
        }
        else if (c == '\n') {
            if (i == 0 || h[i - 1] != '\r')
                bare = 1;
            else
                count++;
        }
        else if (CTL[c])
            return "control character in message head";
    }
    if (bare)
        return "bare CR or LF in message head";
    *crlf = count;
    return NULL;
}

/* The header line at h[*pos] (every line ends in CRLF but the last, which ends the buffer): checked for
 * form, stored as headers[k] = (lowercased name, raw line), *pos moved past it. Returns the field's CT_*
 * kind with its whitespace-stripped value in *v / *vlen (only for a kind other than CT_OTHER), or -1 with
 * ParseError(status, ...) or another exception set. */
static int
header_line(HeadParser *self, int status, const unsigned char *h, Py_ssize_t n, Py_ssize_t *pos,
            PyObject *headers, Py_ssize_t k, const unsigned char **v, Py_ssize_t *vlen)
{
    const unsigned char *line = h + *pos;
    const unsigned char *cr = memchr(line, '\r', (size_t)(n - *pos));
    const Py_ssize_t llen = cr ? cr - line : n - *pos;
    *pos += llen + 2;
    if (llen == 0 || line[0] == ' ' || line[0] == '\t') {
        fail(self, status, "obsolete line folding or empty header line");
        return -1;
    }
    const unsigned char *colon = memchr(line, ':', (size_t)llen);
    const Py_ssize_t nlen = colon ? colon - line : 0;
    int name_ok = nlen > 0;
    for (Py_ssize_t i = 0; name_ok && i < nlen; i++)
        if (!TOKEN[line[i]])
            name_ok = 0;
    if (!name_ok) {
        fail(self, status, "malformed header name");
        return -1;
    }
    PyObject *lname = PyBytes_FromStringAndSize(NULL, nlen);
    if (lname == NULL)
        return -1;
    char *ln = PyBytes_AS_STRING(lname);
    for (Py_ssize_t i = 0; i < nlen; i++)
        ln[i] = (char)lower(line[i]);
    PyObject *raw = PyBytes_FromStringAndSize((const char *)line, llen);
    if (raw == NULL) {
        Py_DECREF(lname);
        return -1;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(lname);
        Py_DECREF(raw);
        return -1;
    }
    PyTuple_SET_ITEM(pair, 0, lname);
    PyTuple_SET_ITEM(pair, 1, raw);
    PyList_SET_ITEM(headers, k, pair);
    const int kind = classify(ln, nlen);
    if (kind != CT_OTHER) {
        *v = colon + 1;
        *vlen = line + llen - *v;
        strip_ws(v, vlen);
    }
    return kind;
}

/* A Content-Length value (a comma list of equal digit strings). Returns the semantic error, or NULL with
 * *content_length set (-1 on entry: none seen yet). */
static const char *
content_length_value(const unsigned char *v, Py_ssize_t vlen, long long *content_length)
{
    const unsigned char *part = v, *vend = v + vlen;
    for (;;) {
        const unsigned char *comma = memchr(part, ',', (size_t)(vend - part));
        const unsigned char *pend = comma ? comma : vend;
        const unsigned char *d = part;
        Py_ssize_t dlen = pend - part;
        strip_ws(&d, &dlen);
        long long value = 0;
        int ok = dlen > 0 && dlen <= 18;
        for (Py_ssize_t i = 0; ok && i < dlen; i++) {
            if (d[i] < '0' || d[i] > '9')
                ok = 0;
            else
                value = value * 10 + (d[i] - '0');
        }
        if (!ok)
            return "invalid Content-Length";
        if (*content_length != -1 && *content_length != value)
            return "conflicting Content-Length values";
        *content_length = value;
        if (comma == NULL)
            return NULL;
        part = comma + 1;
    }
}

enum { CONN_CLOSE = 1, CONN_KEEP_ALIVE = 2, CONN_UPGRADE = 4 };

/* A Connection value: its lowercased tokens added to *connection (a frozenset made on first use), the
 * CONN_* tokens it names or-ed into *flags. Returns -1 with an exception set on failure. */
static int
connection_tokens(const unsigned char *v, Py_ssize_t vlen, PyObject **connection, int *flags)
{
    if (*connection == NULL && (*connection = PyFrozenSet_New(NULL)) == NULL)
        return -1;
    const unsigned char *part = v, *vend = v + vlen;
    for (;;) {
        const unsigned char *comma = memchr(part, ',', (size_t)(vend - part));
        const unsigned char *pend = comma ? comma : vend;
        const unsigned char *d = part;
        Py_ssize_t dlen = pend - part;
        strip_ws(&d, &dlen);
        PyObject *tok = PyBytes_FromStringAndSize(NULL, dlen);
        if (tok == NULL)
            return -1;
        char *tp = PyBytes_AS_STRING(tok);
        for (Py_ssize_t i = 0; i < dlen; i++)
            tp[i] = (char)lower(d[i]);
        if (eq((const unsigned char *)tp, dlen, LIT("close")))
            *flags |= CONN_CLOSE;
        else if (eq((const unsigned char *)tp, dlen, LIT("keep-alive")))
            *flags |= CONN_KEEP_ALIVE;
        else if (eq((const unsigned char *)tp, dlen, LIT("upgrade")))
            *flags |= CONN_UPGRADE;
        int rc = PySet_Add(*connection, tok);
        Py_DECREF(tok);
        if (rc < 0)
            return -1;
        if (comma == NULL)
            return 0;
        part = comma + 1;
    }
}

/* --- request heads ------------------------------------------------------------------------------------ */

/* The parse proper. Returns a new RequestHead or NULL with an exception set. */
static PyObject *
parse(HeadParser *self, PyObject *head, Py_ssize_t max_line, Py_ssize_t max_header_bytes, Py_ssize_t max_headers,
      PyObject *max_headers_obj)
{
    const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(head);
    const Py_ssize_t n = PyBytes_GET_SIZE(head);
    PyObject *headers = NULL, *connection = NULL, *target = NULL, *path = NULL, *result = NULL;
    PyObject *host = NULL, *upgrade = NULL, *request_id = NULL, *method = NULL;

    const Py_ssize_t line_end = find_crlf(h, n);
    const Py_ssize_t rl_len = line_end < 0 ? n : line_end;
    if (rl_len > max_line)
        return fail(self, 414, "request line too long");
    if (line_end >= 0 && n - line_end > max_header_bytes)
        return fail(self, 431, "request headers too large");
    Py_ssize_t crlf = 0;
    const char *byte_err = check_bytes(h, n, &crlf);
    if (byte_err != NULL)
        return fail(self, 400, byte_err);

    /* request line: exactly three parts separated by single spaces */
    const unsigned char *sp1 = memchr(h, ' ', (size_t)rl_len);
    const unsigned char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(h + rl_len - sp1 - 1)) : NULL;
    if (sp2 == NULL || memchr(sp2 + 1, ' ', (size_t)(h + rl_len - sp2 - 1)) != NULL)
        return fail(self, 400, "malformed request line");
    const Py_ssize_t mlen = sp1 - h;
    if (mlen == 0)
        return fail(self, 400, "malformed method");
    for (Py_ssize_t i = 0; i < mlen; i++)
        if (!TOKEN[h[i]])
            return fail(self, 400, "malformed method");
    const unsigned char *proto = sp2 + 1;
    const Py_ssize_t plen = h + rl_len - proto;
    int version;
    if (eq(proto, plen, LIT("HTTP/1.1")))
        version = 11;
    else if (eq(proto, plen, LIT("HTTP/1.0")))
        version = 10;
    else if (plen == 8 && memcmp(proto, "HTTP/", 5) == 0 && proto[5] >= '0' && proto[5] <= '9' && proto[6] == '.' &&
             proto[7] >= '0' && proto[7] <= '9')
        return fail(self, 505, "HTTP version not supported");
    else
        return fail(self, 400, "malformed HTTP version");
    const unsigned char *t = sp1 + 1;
    const Py_ssize_t tlen = sp2 - t;
    if (tlen == 0)
        return fail(self, 400, "malformed request target");
    for (Py_ssize_t i = 0; i < tlen; i++)
        if (t[i] & 0x80)
            return fail(self, 400, "malformed request target");

    int star = 0;
    const unsigned char *abs_host = NULL;
    Py_ssize_t abs_host_len = 0;
    const unsigned char *abs_rest = NULL; /* absolute-form: the target after the authority */
    Py_ssize_t abs_rest_len = 0;
    if (t[0] != '/') {
        if (tlen == 1 && t[0] == '*' && eq(h, mlen, LIT("OPTIONS")))
            star = 1;
        else {
            Py_ssize_t skip = 0;
            if (tlen >= 7 && eq_lower(t, 7, LIT("http://")))
                skip = 7;
            else if (tlen >= 8 && eq_lower(t, 8, LIT("https://")))
                skip = 8;
            else
                return fail(self, 400, "unsupported request target form");
            const unsigned char *rest = t + skip;
            const Py_ssize_t rlen = tlen - skip;
            Py_ssize_t cut = 0;
            while (cut < rlen && rest[cut] != '/' && rest[cut] != '?')
                cut++;
            if (cut == 0 || memchr(rest, '@', (size_t)cut) != NULL || !host_ok(rest, cut))
                return fail(self, 400, "malformed request target");
            abs_host = rest;
            abs_host_len = cut;
            abs_rest = rest + cut;
            abs_rest_len = rlen - cut;
        }
    }

    /* headers */
    const Py_ssize_t nlines = line_end >= 0 ? crlf : 0;
    if (nlines > max_headers) {
        return raise_parse_error(self, 431, PyUnicode_FromFormat("more than %S request headers", max_headers_obj));
    }
    headers = PyList_New(nlines);
    if (headers == NULL)
        return NULL;
    const char *sem_err = NULL; /* the first semantic error, raised only if every line is well-formed */
    const unsigned char *hostv = NULL, *upgv = NULL, *ridv = NULL;
    Py_ssize_t hostv_len = 0, upgv_len = 0, ridv_len = 0;
    long long content_length = -1;
    int chunked = 0, conn_flags = 0;
    Py_ssize_t pos = line_end + 2;
    for (Py_ssize_t k = 0; k < nlines; k++) {
        const unsigned char *v = NULL;
        Py_ssize_t vlen = 0;
        const int kind = header_line(self, 400, h, n, &pos, headers, k, &v, &vlen);
        if (kind < 0)
            goto error;
        if (sem_err != NULL)
            continue;
        switch (kind) {
        case CT_HOST:
            if (hostv != NULL)
                sem_err = "duplicate Host header";
            else if (!host_ok(v, vlen))
                sem_err = "malformed Host header";
            else {
                hostv = v;
                hostv_len = vlen;
            }
            break;
        case CT_CL:
            sem_err = content_length_value(v, vlen, &content_length);
            break;
        case CT_TE:
            if (chunked || !eq_lower(v, vlen, LIT("chunked")))
                sem_err = "unsupported Transfer-Encoding";
            else
                chunked = 1;
            break;
        case CT_CONNECTION:
            if (connection_tokens(v, vlen, &connection, &conn_flags) < 0)
                goto error;
            break;
        case CT_UPGRADE:
            upgv = v;
            upgv_len = vlen;
            break;
        case CT_REQUEST_ID:
            ridv = v;
            ridv_len = vlen;
            break;
        }
    }
    if (sem_err != NULL) {
        fail(self, 400, sem_err);
        goto error;
    }
    if (chunked && content_length != -1) {
        fail(self, 400, "both Content-Length and Transfer-Encoding");
        goto error;
    }
    if (chunked && version == 10) {
        fail(self, 400, "Transfer-Encoding on HTTP/1.0");
        goto error;
    }
    if (abs_host != NULL)
        host = PyBytes_FromStringAndSize((const char *)abs_host, abs_host_len);
    else if (hostv != NULL)
        host = PyBytes_FromStringAndSize((const char *)hostv, hostv_len);
    else if (version == 11) {
        fail(self, 400, "missing Host header");
        goto error;
    }
    else
        host = Py_NewRef(self->empty);
    if (host == NULL)
        goto error;
    if (connection == NULL && (connection = PyFrozenSet_New(NULL)) == NULL)
        goto error;
    const int keep_alive = version == 11 ? !(conn_flags & CONN_CLOSE) : (conn_flags & CONN_KEEP_ALIVE) != 0;

    /* target and routing path */
    if (star) {
        target = PyBytes_FromStringAndSize((const char *)t, 1);
        path = Py_NewRef(self->star);
        if (target == NULL)
            goto error;
    }
    else {
        const unsigned char *tt = t;
        Py_ssize_t ttlen = tlen;
        if (abs_host != NULL) {
            if (abs_rest_len == 0 || abs_rest[0] != '/') {
                target = PyBytes_FromStringAndSize(NULL, abs_rest_len + 1);
                if (target == NULL)
                    goto error;
                PyBytes_AS_STRING(target)[0] = '/';
                if (abs_rest_len)
                    memcpy(PyBytes_AS_STRING(target) + 1, abs_rest, (size_t)abs_rest_len);
                tt = (const unsigned char *)PyBytes_AS_STRING(target);
                ttlen = abs_rest_len + 1;
            }
            else {
                tt = abs_rest;
                ttlen = abs_rest_len;
            }
        }
        if (target == NULL && (target = PyBytes_FromStringAndSize((const char *)tt, ttlen)) == NULL)
            goto error;
        const unsigned char *q = memchr(tt, '?', (size_t)ttlen);
        const Py_ssize_t rawlen = q ? q - tt : ttlen;
        if (canonical_path(tt, rawlen)) {
            path = PyUnicode_DecodeLatin1((const char *)tt, rawlen, NULL);
            if (path == NULL)
                goto error;
        }
        else {
            PyObject *pair = PyObject_CallOneArg(self->split_target, target);
            if (pair == NULL)
                goto error;
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                Py_DECREF(pair);
                PyErr_SetString(PyExc_TypeError, "_split_target must return a (target, path) tuple");
                goto error;
            }
            Py_SETREF(target, Py_NewRef(PyTuple_GET_ITEM(pair, 0)));
            path = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
            Py_DECREF(pair);
        }
    }
    method = PyBytes_FromStringAndSize((const char *)h, mlen);
    if (method == NULL)
        goto error;
    if (upgv != NULL && (conn_flags & CONN_UPGRADE))
        upgrade = PyBytes_FromStringAndSize((const char *)upgv, upgv_len);
    else
        upgrade = Py_NewRef(self->empty);
    if (upgrade == NULL)
        goto error;
    request_id = ridv ? PyBytes_FromStringAndSize((const char *)ridv, ridv_len) : Py_NewRef(self->empty);
    if (request_id == NULL)
        goto error;
    {
        PyObject *version_obj = PyLong_FromLong(version);
        PyObject *cl_obj = PyLong_FromLongLong(content_length);
        if (version_obj == NULL || cl_obj == NULL) {
            Py_XDECREF(version_obj);
            Py_XDECREF(cl_obj);
            goto error;
        }
        PyObject *args[12] = {
            method, target, path, version_obj, headers, host, cl_obj, chunked ? Py_True : Py_False,
            keep_alive ? Py_True : Py_False, upgrade, connection, request_id,
        };
        result = PyObject_Vectorcall(self->head_cls, args, 12, NULL);
        Py_DECREF(version_obj);
        Py_DECREF(cl_obj);
    }
error:
    Py_XDECREF(headers);
    Py_XDECREF(connection);
    Py_XDECREF(target);
    Py_XDECREF(path);
    Py_XDECREF(host);
    Py_XDECREF(upgrade);
    Py_XDECREF(request_id);
    Py_XDECREF(method);
    return result;
}

static int
as_ssize(PyObject *obj, Py_ssize_t *out)
{
    if (!PyLong_CheckExact(obj))
        return 0;
    Py_ssize_t v = PyLong_AsSsize_t(obj);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

static PyObject *
HeadParser_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HeadParser *self = (HeadParser *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t max_line, max_header_bytes, max_headers = 100;
    PyObject *max_headers_obj = NULL;
    if (kwnames == NULL && (nargs == 3 || nargs == 4) && PyBytes_CheckExact(args[0]) &&
        as_ssize(args[1], &max_line) && as_ssize(args[2], &max_header_bytes) &&
        (nargs == 3 || as_ssize(args[3], &max_headers))) {
        max_headers_obj = nargs == 4 ? Py_NewRef(args[3]) : PyLong_FromSsize_t(max_headers);
        if (max_headers_obj == NULL)
            return NULL;
        PyObject *r = parse(self, args[0], max_line, max_header_bytes, max_headers, max_headers_obj);
        Py_DECREF(max_headers_obj);
        return r;
    }
    /* anything else (keywords, other types): exactly what the Python function does */
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

/* --- the object machinery both parser types share ------------------------------------------------------ */

/* A new parser of `type` holding its callables (split_target may be NULL); NULL with an exception set. */
static PyObject *
parser_alloc(PyTypeObject *type, vectorcallfunc vectorcall, PyObject *fallback, PyObject *head_cls,
             PyObject *error_cls, PyObject *split_target)
{
    HeadParser *self = (HeadParser *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = vectorcall;
    self->fallback = Py_NewRef(fallback);
    self->head_cls = Py_NewRef(head_cls);
    self->error_cls = Py_NewRef(error_cls);
    self->split_target = Py_XNewRef(split_target);
    self->empty = PyBytes_FromStringAndSize("", 0);
    if (self->empty == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
HeadParser_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *fallback, *head_cls, *error_cls, *split_target;
    static char *kwlist[] = {"fallback", "request_head", "parse_error", "split_target", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO:HeadParser", kwlist, &fallback, &head_cls, &error_cls,
                                     &split_target))
        return NULL;
    HeadParser *self =
        (HeadParser *)parser_alloc(type, HeadParser_vectorcall, fallback, head_cls, error_cls, split_target);
    if (self == NULL)
        return NULL;
    self->star = PyUnicode_FromString("*");
    if (self->star == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
HeadParser_traverse(HeadParser *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->head_cls);
    Py_VISIT(self->error_cls);
    Py_VISIT(self->split_target);
    return 0;
}

static int
HeadParser_clear(HeadParser *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->head_cls);
    Py_CLEAR(self->error_cls);
    Py_CLEAR(self->split_target);
    Py_CLEAR(self->empty);
    Py_CLEAR(self->star);
    return 0;
}

static void
HeadParser_dealloc(HeadParser *self)
{
    PyObject_GC_UnTrack(self);
    HeadParser_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
HeadParser_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    return PyVectorcall_Call(self, args, kwargs);
}

/* Both parser types: the same layout and life cycle; only the name, doc and constructor differ. */
#define PARSER_TYPE(name, doc, new)                                                                             \
    {                                                                                                           \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dataplane.http._headparser." name, .tp_doc = PyDoc_STR(doc), \
        .tp_basicsize = sizeof(HeadParser),                                                                     \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,                       \
        .tp_vectorcall_offset = offsetof(HeadParser, vectorcall), .tp_new = new, .tp_call = HeadParser_call,   \
        .tp_dealloc = (destructor)HeadParser_dealloc, .tp_traverse = (traverseproc)HeadParser_traverse,        \
        .tp_clear = (inquiry)HeadParser_clear,                                                                  \
    }

static PyTypeObject HeadParserType = PARSER_TYPE(
    "HeadParser",
    "HeadParser(fallback, request_head, parse_error, split_target): a callable with the signature and results of "
    "parser.parse_request_head",
    HeadParser_new);

/* --- response heads: dataplane.http.parser.parse_response_head (the Python function is the reference) ---
 *
 * Why: every proxied response head is parsed once; in Python that was ~5 % of the offload keep-alive
 * profile (parse_response_head, _header_lines, _content_length, _tokens, _check_bytes). Same checks in
 * the same order, same ResponseHead or the same ParseError(502, reason); only the plain one-positional
 * bytes call runs here, anything else goes to the Python function. */

static PyObject *
parse_response(HeadParser *self, PyObject *head)
{
    const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(head);
    const Py_ssize_t n = PyBytes_GET_SIZE(head);
    PyObject *headers = NULL, *connection = NULL, *reason = NULL, *result = NULL;

    const Py_ssize_t line_end = find_crlf(h, n);
    const Py_ssize_t sl_len = line_end < 0 ? n : line_end;
    Py_ssize_t crlf = 0;
    const char *byte_err = check_bytes(h, n, &crlf);
    if (byte_err != NULL)
        return fail(self, 502, byte_err);

    /* proto, _, rest = status_line.partition(b" "); code, _, reason = rest.partition(b" ") */
    const unsigned char *sp1 = memchr(h, ' ', (size_t)sl_len);
    const Py_ssize_t plen = sp1 ? sp1 - h : sl_len;
    int version;
    if (eq(h, plen, LIT("HTTP/1.1")))
        version = 11;
    else if (eq(h, plen, LIT("HTTP/1.0")))
        version = 10;
    else
        return fail(self, 502, "upstream sent an unsupported HTTP version");
    const unsigned char *code = sp1 ? sp1 + 1 : h + sl_len;
    const Py_ssize_t rest_len = h + sl_len - code;
    const unsigned char *sp2 = memchr(code, ' ', (size_t)rest_len);
    const Py_ssize_t clen = sp2 ? sp2 - code : rest_len;
    if (clen != 3 || code[0] < '1' || code[0] > '9' || code[1] < '0' || code[1] > '9' || code[2] < '0' ||
        code[2] > '9')
        return fail(self, 502, "upstream sent a malformed status line");
    const long status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');

    /* header lines: every line is checked for form before any field rule applies */
    const Py_ssize_t nlines = line_end >= 0 ? crlf : 0;
    headers = PyList_New(nlines);
    if (headers == NULL)
        return NULL;
    const char *sem_err = NULL;
    long long content_length = -1;
    int chunked = 0, conn_flags = 0;
    Py_ssize_t pos = line_end + 2;
    for (Py_ssize_t k = 0; k < nlines; k++) {
        const unsigned char *v = NULL;
        Py_ssize_t vlen = 0;
        const int kind = header_line(self, 502, h, n, &pos, headers, k, &v, &vlen);
        if (kind < 0)
            goto error;
        if (sem_err != NULL)
            continue;
        if (kind == CT_CL)
            sem_err = content_length_value(v, vlen, &content_length);
        else if (kind == CT_TE) {
            if (chunked || !eq_lower(v, vlen, LIT("chunked")))
                sem_err = "upstream sent an unsupported Transfer-Encoding";
            else
                chunked = 1;
        }
        else if (kind == CT_CONNECTION) {
            if (connection_tokens(v, vlen, &connection, &conn_flags) < 0)
                goto error;
        }
    }
    if (sem_err != NULL) {
        fail(self, 502, sem_err);
        goto error;
    }
    if (chunked && content_length != -1) {
        fail(self, 502, "upstream sent both Content-Length and Transfer-Encoding");
        goto error;
    }
    if (connection == NULL && (connection = PyFrozenSet_New(NULL)) == NULL)
        goto error;
    const int close = version == 11 ? (conn_flags & CONN_CLOSE) != 0 : !(conn_flags & CONN_KEEP_ALIVE);
    if (sp2 != NULL)
        reason = PyBytes_FromStringAndSize((const char *)sp2 + 1, h + sl_len - sp2 - 1);
    else
        reason = Py_NewRef(self->empty);
    if (reason == NULL)
        goto error;
    {
        PyObject *version_obj = PyLong_FromLong(version);
        PyObject *status_obj = PyLong_FromLong(status);
        PyObject *cl_obj = PyLong_FromLongLong(content_length);
        if (version_obj == NULL || status_obj == NULL || cl_obj == NULL) {
            Py_XDECREF(version_obj);
            Py_XDECREF(status_obj);
            Py_XDECREF(cl_obj);
            goto error;
        }
        PyObject *args[8] = {
            version_obj, status_obj, reason, headers, cl_obj, chunked ? Py_True : Py_False,
            close ? Py_True : Py_False, connection,
        };
        result = PyObject_Vectorcall(self->head_cls, args, 8, NULL);
        Py_DECREF(version_obj);
        Py_DECREF(status_obj);
        Py_DECREF(cl_obj);
    }
error:
    Py_XDECREF(headers);
    Py_XDECREF(connection);
    Py_XDECREF(reason);
    return result;
}

static PyObject *
ResponseParser_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HeadParser *self = (HeadParser *)callable;
    if (kwnames == NULL && PyVectorcall_NARGS(nargsf) == 1 && PyBytes_CheckExact(args[0]))
        return parse_response(self, args[0]);
    /* anything else (keywords, other types): exactly what the Python function does */
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static PyObject *
ResponseParser_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *fallback, *head_cls, *error_cls;
    static char *kwlist[] = {"fallback", "response_head", "parse_error", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:ResponseParser", kwlist, &fallback, &head_cls, &error_cls))
        return NULL;
    return parser_alloc(type, ResponseParser_vectorcall, fallback, head_cls, error_cls, NULL);
}

static PyTypeObject ResponseParserType = PARSER_TYPE(
    "ResponseParser",
    "ResponseParser(fallback, response_head, parse_error): a callable with the signature and results of "
    "parser.parse_response_head",
    ResponseParser_new);

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dataplane.http._headparser",
    .m_doc = PyDoc_STR("C request- and response-head parsers; see dataplane/http/parser.py for the reference implementation."),
    .m_size = 0,
};

PyMODINIT_FUNC
PyInit__headparser(void)
{
    init_tables();
    if (PyType_Ready(&HeadParserType) < 0 || PyType_Ready(&ResponseParserType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "HeadParser", (PyObject *)&HeadParserType) < 0 ||
        PyModule_AddObjectRef(m, "ResponseParser", (PyObject *)&ResponseParserType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
