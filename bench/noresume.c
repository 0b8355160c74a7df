/* LD_PRELOAD shim for the load generator: never resume a TLS session, so every new connection
 * is a full handshake (wrk keeps the session across SSL_clear, h2load calls SSL_set_session).
 * Declares the few OpenSSL symbols it needs itself, so no -dev headers are required. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

static int (*real_set_session)(SSL *, SSL_SESSION *);
static int (*real_connect)(SSL *);
static int (*real_do_handshake)(SSL *);
static int (*real_in_before)(const SSL *);

static void load(void) {
    if (!real_set_session) {
        real_set_session = (int (*)(SSL *, SSL_SESSION *))dlsym(RTLD_NEXT, "SSL_set_session");
        real_connect = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
        real_do_handshake = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_do_handshake");
        real_in_before = (int (*)(const SSL *))dlsym(RTLD_NEXT, "SSL_in_before");
    }
}

static void forget(SSL *s) {
    if (real_in_before(s)) real_set_session(s, NULL);
}

int SSL_set_session(SSL *s, SSL_SESSION *session) {
    (void)session;
    load();
    return real_set_session(s, NULL);
}

int SSL_connect(SSL *s) {
    load();
    forget(s);
    return real_connect(s);
}

int SSL_do_handshake(SSL *s) {
    load();
    forget(s);
    return real_do_handshake(s);
}
