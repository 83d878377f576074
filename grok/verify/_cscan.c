/* The verifier's whole-text word scans and clause split, compiled (grok.verify.scan loads this module).

   Two generic scanners over a str's code points, with Python's own `re` character classes:
   \w is Py_UNICODE_ISALNUM(c) || c == '_' (what _sre's SRE_UNI_IS_WORD tests), \s is Py_UNICODE_ISSPACE.

   compile(table, words): the table (below) checked once and kept with its words, for words().
   words(compiled, text, flags): the matches of a word trie (grok.verify.scan.WordScanner builds the
       table from its words, once) as `re.finditer` of grok.verify.scan.word_trie's pattern finds them:
       leftmost first, then from the end of the last match; at a position the longest word whose end
       passes the end test. A word starts only where the character before it is not \w (flags & 1: nor
       "-"). End tests (flags >> 1 & 3): 0 none, 1 \b, 2 (?![\w-]). flags & 8: return True/False at the
       first match (a search). Returns [(start, end, word), ...], word being the words[] entry of the trie
       node (the same string the match's group(0) spells).
   clauses(text): the clause spans of grok.verify.verifier._clause_spans (separators: white space after
       . ; ! ? and runs of line breaks).

   The table is a bytes object of int32: [magic, n_nodes, n_pairs, root_ascii[128], term[n_nodes],
   first[n_nodes], count[n_nodes], cp[n_pairs], child[n_pairs]]; node 0 is the root, term[i] the index in
   words of the word ending at node i (-1: none), a node's children are cp/child[first .. first+count)
   sorted by code point, root_ascii[c] the root's child for an ASCII c (-1: none). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define TABLE_MAGIC 0x47524b31 /* "GRK1" */

static unsigned char ascii_word[128];

typedef struct {
    int32_t n_nodes, n_pairs;
    const int32_t *root_ascii, *term, *first, *count, *cp, *child;
} Table;

static inline int is_word(Py_UCS4 c) {
    if (c < 128) return ascii_word[c];
    return Py_UNICODE_ISALNUM(c) ? 1 : 0;
}

static int table_from(PyObject *obj, Table *t) {
    if (!PyBytes_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "table must be bytes");
        return -1;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(obj);
    const int32_t *a = (const int32_t *)PyBytes_AS_STRING(obj);
    if (size < 3 * 4 || a[0] != TABLE_MAGIC) {
        PyErr_SetString(PyExc_ValueError, "not a word table");
        return -1;
    }
    int32_t n = a[1], m = a[2];
    if (n < 1 || m < 0 || size != (Py_ssize_t)4 * (3 + 128 + 3 * (Py_ssize_t)n + 2 * (Py_ssize_t)m)) {
        PyErr_SetString(PyExc_ValueError, "word table of the wrong size");
        return -1;
    }
    t->n_nodes = n;
    t->n_pairs = m;
    t->root_ascii = a + 3;
    t->term = t->root_ascii + 128;
    t->first = t->term + n;
    t->count = t->first + n;
    t->cp = t->count + n;
    t->child = t->cp + m;
    return 0;
}

static inline int32_t child_of(const Table *t, int32_t node, Py_UCS4 c) {
    int32_t lo = t->first[node], hi = lo + t->count[node];
    if (hi - lo <= 8) {
        for (int32_t i = lo; i < hi; i++) {
            if ((Py_UCS4)t->cp[i] == c) return t->child[i];
        }
        return -1;
    }
    while (lo < hi) { /* binary search on the sorted code points */
        int32_t mid = (lo + hi) >> 1;
        Py_UCS4 x = (Py_UCS4)t->cp[mid];
        if (x == c) return t->child[mid];
        if (x < c) lo = mid + 1; else hi = mid;
    }
    return -1;
}

/* (a, b, word) or (a, b) when word is NULL */
static PyObject *triple(Py_ssize_t a, Py_ssize_t b, PyObject *word) {
    PyObject *item = PyTuple_New(word ? 3 : 2);
    if (item == NULL) return NULL;
    PyObject *x = PyLong_FromSsize_t(a), *y = PyLong_FromSsize_t(b);
    if (x == NULL || y == NULL) {
        Py_XDECREF(x);
        Py_XDECREF(y);
        Py_DECREF(item);
        return NULL;
    }
    PyTuple_SET_ITEM(item, 0, x);
    PyTuple_SET_ITEM(item, 1, y);
    if (word) {
        Py_INCREF(word);
        PyTuple_SET_ITEM(item, 2, word);
    }
    return item;
}

/* the end test at position e (0 < e <= n) */
#define END_OK(e, READ)                                                                              \
    (end_mode == 0 ? 1                                                                               \
     : end_mode == 1 ? (is_word(READ((e) - 1)) != ((e) < n ? is_word(READ(e)) : 0))                  \
     : ((e) >= n || (!is_word(READ(e)) && READ(e) != '-')))

/* a str's code point i, by its width (kind) */
#define READ1(i) ((Py_UCS4)((const Py_UCS1 *)data)[i])
#define READ2(i) ((Py_UCS4)((const Py_UCS2 *)data)[i])
#define READ4(i) (((const Py_UCS4 *)data)[i])
/* BODY(READ) written once for each width of str */
#define BY_KIND(BODY)                                                                                \
    if (kind == PyUnicode_1BYTE_KIND) { BODY(READ1) }                                                \
    else if (kind == PyUnicode_2BYTE_KIND) { BODY(READ2) }                                           \
    else { BODY(READ4) }

#define SCAN_BODY(READ)                                                                                 \
    for (Py_ssize_t p = 0; p < n;) {                                                                 \
        if (p > 0) {                                                                                 \
            Py_UCS4 b = READ(p - 1);                                                                 \
            if (is_word(b) || (hyphen && b == '-')) { p++; continue; }                               \
        }                                                                                            \
        Py_UCS4 c = READ(p);                                                                         \
        int32_t node = c < 128 ? t.root_ascii[c] : child_of(&t, 0, c);                               \
        if (node < 0) { p++; continue; }                                                             \
        Py_ssize_t best_end = -1, k = p + 1;                                                         \
        int32_t best_term = -1;                                                                      \
        for (;;) {                                                                                   \
            int32_t w = t.term[node];                                                                \
            if (w >= 0 && END_OK(k, READ)) { best_end = k; best_term = w; }                                \
            if (k >= n || t.count[node] == 0) break;                                                 \
            node = child_of(&t, node, READ(k));                                                      \
            if (node < 0) break;                                                                     \
            k++;                                                                                     \
        }                                                                                            \
        if (best_end < 0) { p++; continue; }                                                         \
        if (any) { Py_DECREF(out); Py_RETURN_TRUE; }                                                 \
        PyObject *word = PyTuple_GET_ITEM(words, best_term);                                         \
        PyObject *item = triple(p, best_end, word);                                                                                    \
        if (item == NULL || PyList_Append(out, item) < 0) { Py_XDECREF(item); Py_DECREF(out); return NULL; } \
        Py_DECREF(item);                                                                             \
        p = best_end;                                                                                \
    }

typedef struct {
    Table t;
    PyObject *table, *words; /* strong references: t points into table */
} Compiled;

static void compiled_free(PyObject *capsule) {
    Compiled *c = (Compiled *)PyCapsule_GetPointer(capsule, "grok.verify._cscan.table");
    if (c == NULL) return;
    Py_XDECREF(c->table);
    Py_XDECREF(c->words);
    PyMem_Free(c);
}

/* compile(table, words): the table checked once (sizes, word indices, child indices), kept with its words */
static PyObject *scan_compile(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "compile(table, words)");
        return NULL;
    }
    Table t;
    if (table_from(args[0], &t) < 0) return NULL;
    PyObject *words = args[1];
    if (!PyTuple_Check(words)) {
        PyErr_SetString(PyExc_TypeError, "words must be a tuple");
        return NULL;
    }
    Py_ssize_t nw = PyTuple_GET_SIZE(words);
    for (int32_t i = 0; i < t.n_nodes; i++) {
        if (t.term[i] >= nw || t.term[i] < -1 || t.first[i] < 0 || t.count[i] < 0
                || (Py_ssize_t)t.first[i] + t.count[i] > t.n_pairs) {
            PyErr_SetString(PyExc_ValueError, "word table and words disagree");
            return NULL;
        }
    }
    for (int32_t i = 0; i < t.n_pairs; i++) {
        if (t.child[i] <= 0 || t.child[i] >= t.n_nodes) {
            PyErr_SetString(PyExc_ValueError, "word table: child out of range");
            return NULL;
        }
    }
    for (int c = 0; c < 128; c++) {
        if (t.root_ascii[c] != -1 && (t.root_ascii[c] <= 0 || t.root_ascii[c] >= t.n_nodes)) {
            PyErr_SetString(PyExc_ValueError, "word table: root child out of range");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < nw; i++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(words, i))) {
            PyErr_SetString(PyExc_TypeError, "words must be str");
            return NULL;
        }
    }
    Compiled *c = PyMem_Malloc(sizeof(Compiled));
    if (c == NULL) return PyErr_NoMemory();
    c->t = t;
    Py_INCREF(args[0]);
    Py_INCREF(words);
    c->table = args[0];
    c->words = words;
    PyObject *cap = PyCapsule_New(c, "grok.verify._cscan.table", compiled_free);
    if (cap == NULL) {
        Py_DECREF(c->table);
        Py_DECREF(c->words);
        PyMem_Free(c);
    }
    return cap;
}

static PyObject *scan_words(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "words(compiled, text, flags)");
        return NULL;
    }
    Compiled *cp = (Compiled *)PyCapsule_GetPointer(args[0], "grok.verify._cscan.table");
    if (cp == NULL) return NULL;
    Table t = cp->t;
    PyObject *words = cp->words, *text = args[1];
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "text must be a str");
        return NULL;
    }
    long flags = PyLong_AsLong(args[2]);
    if (flags == -1 && PyErr_Occurred()) return NULL;
    int hyphen = (int)(flags & 1), end_mode = (int)((flags >> 1) & 3), any = (flags & 8) != 0;
    if (PyUnicode_READY(text) < 0) return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    BY_KIND(SCAN_BODY)
    if (any) { Py_DECREF(out); Py_RETURN_FALSE; }
    return out;
}

static int append_span(PyObject *out, Py_ssize_t a, Py_ssize_t b) {
    PyObject *item = triple(a, b, NULL);
    if (item == NULL) return -1;
    int r = PyList_Append(out, item);
    Py_DECREF(item);
    return r;
}

/* _CLAUSE_SPLIT = \.(\s+)|;(\s+)|!(\s+)|\?(\s+)|\n\n* : the separator is the white space after the mark
   (its group) or the run of line breaks (the whole match); the next search starts at its end. */
#define CLAUSE_BODY(READ)                                                                               \
    for (Py_ssize_t p = 0; p < n;) {                                                                 \
        Py_UCS4 c = READ(p);                                                                         \
        Py_ssize_t a, b;                                                                             \
        if (c == '.' || c == ';' || c == '!' || c == '?') {                                          \
            b = p + 1;                                                                               \
            while (b < n && Py_UNICODE_ISSPACE(READ(b))) b++;                                        \
            if (b == p + 1) { p++; continue; }                                                       \
            a = p + 1;                                                                               \
        } else if (c == '\n') {                                                                      \
            a = p;                                                                                   \
            b = p + 1;                                                                               \
            while (b < n && READ(b) == '\n') b++;                                                    \
        } else { p++; continue; }                                                                    \
        if (append_span(out, start, a) < 0) { Py_DECREF(out); return NULL; }                         \
        start = b;                                                                                   \
        p = b;                                                                                       \
    }

static PyObject *scan_clauses(PyObject *self, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "clauses(text): text must be a str");
        return NULL;
    }
    if (PyUnicode_READY(text) < 0) return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), start = 0;
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    BY_KIND(CLAUSE_BODY)
    if (append_span(out, start, n) < 0) { Py_DECREF(out); return NULL; }
    return out;
}

static PyMethodDef methods[] = {
    {"compile", (PyCFunction)(void (*)(void))scan_compile, METH_FASTCALL,
     "compile(table, words) -> the checked table (a capsule) for words()"},
    {"words", (PyCFunction)(void (*)(void))scan_words, METH_FASTCALL,
     "words(compiled, text, flags) -> [(start, end, word), ...] or a bool (flags & 8)"},
    {"clauses", (PyCFunction)scan_clauses, METH_O, "clauses(text) -> [(start, end), ...]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cscan", "The verifier's word scans and clause split, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__cscan(void) {
    for (int c = 0; c < 128; c++) ascii_word[c] = (Py_UNICODE_ISALNUM(c) || c == '_') ? 1 : 0;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "TABLE_MAGIC", TABLE_MAGIC) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
