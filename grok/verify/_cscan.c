/* The verifier's whole-text word scans and clause split, compiled (grok.verify.scan loads this module), and
   three of grok.eval's inner loops (index_find, lcs, count_rows: below).

   Two generic scanners over a str's code points, with Python's own `re` character classes:
   \w is Py_UNICODE_ISALNUM(c) || c == '_' (what _sre's SRE_UNI_IS_WORD tests), \s is Py_UNICODE_ISSPACE.

   compile(words): the trie of words (a tuple of non-empty str), built here as a transition table: node 0 is
       the root, term[i] the index in words of the word ending at node i (-1: none), a node's children are
       cp/child[first .. first+count) sorted by code point, root_ascii[c] the root's child for an ASCII c.
   words(compiled, text, flags): the matches of that trie as `re.finditer` of grok.verify.scan.word_trie's
       pattern finds them: leftmost first, then from the end of the last match; at a position the longest
       word whose end passes the end test. A word starts only where the character before it is not \w
       (flags & 1: nor "-"). End tests (flags >> 1 & 3): 0 none, 1 \b, 2 (?![\w-]). flags & 8: return
       True/False at the first match (a search). Returns [(start, end, word), ...], word being the words[]
       entry (the same string the match's group(0) spells).
   clauses(text): the clause spans of grok.verify.scan.clause_spans (separators: white space after
       . ; ! ? and runs of line breaks).
   mask(text, words, kinds) and numbers(text, units): the number mask and the number scan (below).
   by_clause(matches, spans): matches handed to the clauses they lie in (below).
   gather(cache, words): grok.eval.text.AnswerWords' per-word entries of an answer joined (below).
   index_find(slots, values, keys, bits, out): grok.eval.text.IntIndex's lookup of many keys (below).
   lcs(candidate, vocab, ids, bits, n): grok.eval.text.lcs_with's bit-parallel LCS length over 64-bit words.
   count_rows(draws, out): grok.eval.score.resample_weights' counts of each row's draws (below). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static unsigned char ascii_word[128], ascii_decimal[128], ascii_space[128];

typedef struct {
    int32_t n_nodes, n_pairs;
    int32_t root_ascii[128];
    int32_t *term, *first, *count, *child; /* one block: term[n] first[n] count[n] child[n - 1] */
    Py_UCS4 *cp;                           /* [n - 1] */
} Table;

static inline int is_word(Py_UCS4 c) {
    if (c < 128) return ascii_word[c];
    return Py_UNICODE_ISALNUM(c) ? 1 : 0;
}

/* \d and \s as re tests them (str.isdecimal, str.isspace); isw: \w */
static inline int isd(Py_UCS4 c) { return c < 128 ? ascii_decimal[c] : Py_UNICODE_ISDECIMAL(c); }
static inline int iss(Py_UCS4 c) { return c < 128 ? ascii_space[c] : Py_UNICODE_ISSPACE(c); }
static inline int isw(Py_UCS4 c) { return c != 0 && is_word(c); }

static inline int32_t child_of(const Table *t, int32_t node, Py_UCS4 c) {
    int32_t lo = t->first[node], hi = lo + t->count[node];
    if (hi - lo <= 8) {
        for (int32_t i = lo; i < hi; i++) {
            if (t->cp[i] == c) return t->child[i];
        }
        return -1;
    }
    while (lo < hi) { /* binary search on the sorted code points */
        int32_t mid = (lo + hi) >> 1;
        Py_UCS4 x = t->cp[mid];
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
#define END_OK(e, READ)                                                                             \
    (end_mode == 0 ? 1                                                                              \
     : end_mode == 1 ? (is_word(READ((e) - 1)) != ((e) < n ? is_word(READ(e)) : 0))                 \
     : ((e) >= n || (!is_word(READ(e)) && READ(e) != '-')))

/* a str's code point i, by its width (kind) */
#define READ1(i) ((Py_UCS4)((const Py_UCS1 *)data)[i])
#define READ2(i) ((Py_UCS4)((const Py_UCS2 *)data)[i])
#define READ4(i) (((const Py_UCS4 *)data)[i])
/* BODY(READ) written once for each width of str */
#define BY_KIND(BODY)                                                                               \
    if (kind == PyUnicode_1BYTE_KIND) { BODY(READ1) }                                               \
    else if (kind == PyUnicode_2BYTE_KIND) { BODY(READ2) }                                          \
    else { BODY(READ4) }

#define SCAN_BODY(READ)                                                                             \
    for (Py_ssize_t p = 0; p < n;) {                                                                \
        if (p > 0) {                                                                                \
            Py_UCS4 b = READ(p - 1);                                                                \
            if (is_word(b) || (hyphen && b == '-')) { p++; continue; }                              \
        }                                                                                           \
        Py_UCS4 c = READ(p);                                                                        \
        int32_t node = c < 128 ? tp->root_ascii[c] : child_of(tp, 0, c);                            \
        if (node < 0) { p++; continue; }                                                            \
        Py_ssize_t best_end = -1, k = p + 1;                                                        \
        int32_t best_term = -1;                                                                     \
        for (;;) {                                                                                  \
            int32_t w = tp->term[node];                                                             \
            if (w >= 0 && END_OK(k, READ)) { best_end = k; best_term = w; }                         \
            if (k >= n || tp->count[node] == 0) break;                                              \
            node = child_of(tp, node, READ(k));                                                     \
            if (node < 0) break;                                                                    \
            k++;                                                                                    \
        }                                                                                           \
        if (best_end < 0) { p++; continue; }                                                        \
        if (any) { Py_DECREF(out); Py_RETURN_TRUE; }                                                \
        PyObject *word = PyTuple_GET_ITEM(words, best_term);                                        \
        PyObject *item = triple(p, best_end, word);                                                 \
        if (item == NULL || PyList_Append(out, item) < 0) { Py_XDECREF(item); Py_DECREF(out); return NULL; } \
        Py_DECREF(item);                                                                            \
        p = best_end;                                                                               \
    }

typedef struct {
    Table t;
    PyObject *words; /* a strong reference */
} Compiled;

static void compiled_free(PyObject *capsule) {
    Compiled *c = (Compiled *)PyCapsule_GetPointer(capsule, "grok.verify._cscan.table");
    if (c == NULL) return;
    Py_XDECREF(c->words);
    PyMem_Free(c->t.term);
    PyMem_Free(c->t.cp);
    PyMem_Free(c);
}

/* compile(words): the trie of words as a transition table (see the top of this file), for words() */
static PyObject *scan_compile(PyObject *self, PyObject *words) {
    (void)self;
    if (!PyTuple_Check(words)) {
        PyErr_SetString(PyExc_TypeError, "compile(words): words must be a tuple of str");
        return NULL;
    }
    Py_ssize_t nw = PyTuple_GET_SIZE(words), total = 1;
    for (Py_ssize_t i = 0; i < nw; i++) {
        PyObject *w = PyTuple_GET_ITEM(words, i);
        if (!PyUnicode_Check(w) || PyUnicode_READY(w) < 0 || PyUnicode_GET_LENGTH(w) == 0) {
            PyErr_SetString(PyExc_TypeError, "compile(words): words must be non-empty str");
            return NULL;
        }
        total += PyUnicode_GET_LENGTH(w);
    }
    if (total > INT32_MAX / 4) {
        PyErr_SetString(PyExc_ValueError, "compile(words): too many characters");
        return NULL;
    }
    /* a linked trie first (children in code-point order), then numbered breadth first into the table */
    Py_UCS4 *lcp = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)total);
    int32_t *lnext = PyMem_Malloc(sizeof(int32_t) * 4 * (size_t)total);
    Compiled *c = PyMem_Calloc(1, sizeof(Compiled));
    if (lcp == NULL || lnext == NULL || c == NULL) {
        PyMem_Free(lcp);
        PyMem_Free(lnext);
        PyMem_Free(c);
        return PyErr_NoMemory();
    }
    int32_t *lfirst = lnext + total, *lterm = lfirst + total, *order = lterm + total, n = 1;
    lfirst[0] = -1;
    lterm[0] = -1;
    for (Py_ssize_t i = 0; i < nw; i++) {
        PyObject *w = PyTuple_GET_ITEM(words, i);
        int kind = PyUnicode_KIND(w);
        const void *data = PyUnicode_DATA(w);
        int32_t node = 0;
        for (Py_ssize_t k = 0; k < PyUnicode_GET_LENGTH(w); k++) {
            Py_UCS4 ch = PyUnicode_READ(kind, data, k);
            int32_t prev = -1, x = lfirst[node];
            while (x >= 0 && lcp[x] < ch) {
                prev = x;
                x = lnext[x];
            }
            if (x < 0 || lcp[x] != ch) {
                int32_t m = n++;
                lcp[m] = ch;
                lnext[m] = x;
                lfirst[m] = -1;
                lterm[m] = -1;
                if (prev < 0) lfirst[node] = m; else lnext[prev] = m;
                x = m;
            }
            node = x;
        }
        lterm[node] = (int32_t)i;
    }
    Table *t = &c->t;
    t->n_nodes = n;
    t->n_pairs = n - 1;
    t->term = PyMem_Malloc(sizeof(int32_t) * (4 * (size_t)n));
    t->cp = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)n);
    if (t->term == NULL || t->cp == NULL) {
        PyMem_Free(lcp);
        PyMem_Free(lnext);
        PyMem_Free(t->term);
        PyMem_Free(t->cp);
        PyMem_Free(c);
        return PyErr_NoMemory();
    }
    t->first = t->term + n;
    t->count = t->first + n;
    t->child = t->count + n;
    int32_t head = 0, tail = 0, pairs = 0;
    order[tail++] = 0;
    while (head < tail) { /* order[i]: the linked node numbered i */
        int32_t i = head++, old = order[i];
        t->term[i] = lterm[old];
        t->first[i] = pairs;
        t->count[i] = 0;
        for (int32_t x = lfirst[old]; x >= 0; x = lnext[x]) {
            t->cp[pairs] = lcp[x];
            t->child[pairs++] = tail;
            order[tail++] = x;
            t->count[i]++;
        }
    }
    for (int k = 0; k < 128; k++) t->root_ascii[k] = -1;
    for (int32_t k = 0; k < t->count[0]; k++) {
        if (t->cp[k] < 128) t->root_ascii[t->cp[k]] = t->child[k];
    }
    PyMem_Free(lcp);
    PyMem_Free(lnext);
    Py_INCREF(words);
    c->words = words;
    PyObject *cap = PyCapsule_New(c, "grok.verify._cscan.table", compiled_free);
    if (cap == NULL) {
        Py_DECREF(words);
        PyMem_Free(t->term);
        PyMem_Free(t->cp);
        PyMem_Free(c);
    }
    return cap;
}

static PyObject *scan_words(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "words(compiled, text, flags)");
        return NULL;
    }
    if (!PyCapsule_IsValid(args[0], "grok.verify._cscan.table")) {
        PyErr_SetString(PyExc_TypeError, "words(compiled, text, flags): compiled comes from compile()");
        return NULL;
    }
    Compiled *cp = (Compiled *)PyCapsule_GetPointer(args[0], "grok.verify._cscan.table");
    const Table *tp = &cp->t;
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
#define CLAUSE_BODY(READ)                                                                           \
    for (Py_ssize_t p = 0; p < n;) {                                                                \
        Py_UCS4 c = READ(p);                                                                        \
        Py_ssize_t a, b;                                                                            \
        if (c == '.' || c == ';' || c == '!' || c == '?') {                                         \
            b = p + 1;                                                                              \
            while (b < n && iss(READ(b))) b++;                                                      \
            if (b == p + 1) { p++; continue; }                                                      \
            a = p + 1;                                                                              \
        } else if (c == '\n') {                                                                     \
            a = p;                                                                                  \
            b = p + 1;                                                                              \
            while (b < n && READ(b) == '\n') b++;                                                   \
        } else { p++; continue; }                                                                   \
        if (append_span(out, start, a) < 0) { Py_DECREF(out); return NULL; }                        \
        start = b;                                                                                  \
        p = b;                                                                                      \
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


/* ---- the number mask and the number scan, on a UCS4 copy of the text ------------------------------------ */

typedef struct {
    const Py_UCS4 *s;
    Py_ssize_t n;
} Text;

#define AT(i) ((i) < x->n ? x->s[i] : 0)

/* the end of the ASCII literal lit at i, or -1 */
static Py_ssize_t lit(const Text *x, Py_ssize_t i, const char *lit) {
    for (; *lit; lit++, i++) {
        if (i >= x->n || x->s[i] != (Py_UCS4)(unsigned char)*lit) return -1;
    }
    return i;
}
static inline Py_ssize_t spaces(const Text *x, Py_ssize_t i) {
    while (iss(AT(i))) i++;
    return i;
}
static inline Py_ssize_t digits(const Text *x, Py_ssize_t i) {
    while (isd(AT(i))) i++;
    return i;
}
/* a word ends at i (the character before i is a word character): \b there, i.e. (?!\w) */
static inline int word_end(const Text *x, Py_ssize_t i) { return !isw(AT(i)); }

/* The mask rule (grok.verify.scan: _MASK_WORDS, _MASK_AFTER_DIGIT); each returns the end of the match or -1.
   Where the regex could backtrack, the alternatives are tried in its order (see the notes there). */
enum { F_MM = 1, F_AGE = 2, F_SPACE_INT = 3, F_INT = 4, F_Z = 5 };

/* \s+\d(?:\.\d)?\s*mm\b(?!\s*[³3^]) */
static Py_ssize_t f_mm(const Text *x, Py_ssize_t i) {
    Py_ssize_t r = spaces(x, i);
    if (r == i || !isd(AT(r))) return -1;
    r++;
    Py_ssize_t opts[2] = {r + 2, r};
    int k0 = (AT(r) == '.' && isd(AT(r + 1))) ? 0 : 1;
    for (int k = k0; k < 2; k++) {
        Py_ssize_t t = lit(x, spaces(x, opts[k]), "mm");
        if (t < 0 || !word_end(x, t)) continue;
        Py_UCS4 c = AT(spaces(x, t));
        if (c == 0xB3 || c == '3' || c == '^') continue;
        return t;
    }
    return -1;
}

/* \d+\b */
static Py_ssize_t f_int(const Text *x, Py_ssize_t i) {
    if (!isd(AT(i))) return -1;
    Py_ssize_t r = digits(x, i);
    return word_end(x, r) ? r : -1;
}

/* \s+\d+\b */
static Py_ssize_t f_space_int(const Text *x, Py_ssize_t i) {
    Py_ssize_t r = spaces(x, i);
    return r == i ? -1 : f_int(x, r);
}

/* [-−]?\d+(?:\.\d+)? after \s*: the end (greedy; nothing follows it in the rule) */
static Py_ssize_t z_number(const Text *x, Py_ssize_t i) {
    Py_ssize_t u = spaces(x, i);
    if (AT(u) == '-' || AT(u) == 0x2212) u++;
    if (!isd(AT(u))) return -1;
    u = digits(x, u);
    if (AT(u) == '.' && isd(AT(u + 1))) u = digits(x, u + 1);
    return u;
}

/* \s*(?:of|is|was|=|:)?\s*[-−]?\d+(?:\.\d+)? */
static Py_ssize_t z_rest(const Text *x, Py_ssize_t i) {
    static const char *const words[] = {"of", "is", "was", "=", ":"};
    Py_ssize_t t = spaces(x, i);
    for (int k = 0; k < 5; k++) {
        Py_ssize_t w = lit(x, t, words[k]);
        if (w >= 0) {
            Py_ssize_t r = z_number(x, w);
            if (r >= 0) return r;
            break;
        }
    }
    return z_number(x, t);
}

/* (?:-score|\s+score)?\s*(?:of|is|was|=|:)?\s*[-−]?\d+(?:\.\d+)? */
static Py_ssize_t f_z(const Text *x, Py_ssize_t i) {
    Py_ssize_t a = lit(x, i, "-score");
    if (a < 0) {
        Py_ssize_t t = spaces(x, i);
        a = t > i ? lit(x, t, "score") : -1;
    }
    if (a >= 0) {
        Py_ssize_t r = z_rest(x, a);
        if (r >= 0) return r;
    }
    return z_rest(x, i);
}

static Py_ssize_t follow(const Text *x, int kind, Py_ssize_t i) {
    switch (kind) {
    case F_MM: return f_mm(x, i);
    case F_AGE: {
        if (AT(i) == 'd') {
            Py_ssize_t r = f_space_int(x, i + 1);
            if (r >= 0) return r;
        }
        return f_space_int(x, i);
    }
    case F_SPACE_INT: return f_space_int(x, i);
    case F_INT: return f_int(x, i);
    case F_Z: return f_z(x, i);
    }
    return -1;
}

/* after the first digit: (?:\.\d)?(?:\s*-\s*\d(?:\.\d)?)?\s*mm\s+(?:circle|...|radius)\b */
static Py_ssize_t d_mm_rest(const Text *x, Py_ssize_t i) {
    static const char *const words[] = {"circle", "ring", "subfield", "zone", "area", "cube", "grid", "diameter",
                                        "radius"};
    Py_ssize_t t = lit(x, spaces(x, i), "mm");
    if (t < 0) return -1;
    Py_ssize_t u = spaces(x, t);
    if (u == t) return -1;
    for (int k = 0; k < 9; k++) {
        Py_ssize_t w = lit(x, u, words[k]);
        if (w >= 0 && word_end(x, w)) return w;
    }
    return -1;
}

static Py_ssize_t d_mm_range(const Text *x, Py_ssize_t i) {
    Py_ssize_t t = spaces(x, i);
    if (AT(t) == '-') {
        t = spaces(x, t + 1);
        if (isd(AT(t))) {
            t++;
            Py_ssize_t opts[2] = {t + 2, t};
            for (int k = (AT(t) == '.' && isd(AT(t + 1))) ? 0 : 1; k < 2; k++) {
                Py_ssize_t r = d_mm_rest(x, opts[k]);
                if (r >= 0) return r;
            }
        }
    }
    return d_mm_rest(x, i);
}

static const char *const D_UNITS[] = {
    "times", "-fold", "fold", "sds", "sd", "standard deviations", "standard deviation", "quadrants", "quadrant",
    "sectors", "sector", "clock hours", "clock hour", "o'clock", "disc diameters", "disc diameter", "dd", "months",
    "month", "weeks", "week", "days", "day", "hours", "hour", "minutes", "minute", "mmhg", "mg", "ml", "dioptres",
    "dioptre", "diopters", "diopter", NULL};

/* the masked span starting with the digit at p (a word start), or -1 */
static Py_ssize_t mask_digit(const Text *x, Py_ssize_t p) {
    Py_ssize_t r = p + 1, end;
    /* (?:\.\d)?(?:range)?\s*mm\s+(?:circle|...)\b */
    if (AT(r) == '.' && isd(AT(r + 1)) && (end = d_mm_range(x, r + 2)) >= 0) return end;
    if ((end = d_mm_range(x, r)) >= 0) return end;
    /* \d*+ then the alternatives */
    r = digits(x, r);
    Py_ssize_t f = (AT(r) == '.' && isd(AT(r + 1))) ? digits(x, r + 1) : r; /* (?:\.\d++)?+ */
    static const char *const ords[] = {"st", "nd", "rd", "th"};
    for (int k = 0; k < 4; k++) {
        Py_ssize_t w = lit(x, f, ords[k]);
        if (w >= 0 && word_end(x, w)) return w;
    }
    if ((end = lit(x, r, "-year-old")) >= 0 && word_end(x, end)) return end;
    Py_ssize_t t = spaces(x, r);
    if ((end = lit(x, t, "year")) >= 0) {
        if (AT(end) == 's' && word_end(x, end + 1)) return end + 1;
        if (word_end(x, end)) return end;
    }
    if (AT(t) == 'y' && word_end(x, t + 1)) return t + 1;
    t = spaces(x, f);
    for (int k = 0; D_UNITS[k]; k++) {
        Py_ssize_t w = lit(x, t, D_UNITS[k]);
        if (w >= 0 && word_end(x, w)) return w;
    }
    if (AT(r) == '/' && isd(AT(r + 1))) return digits(x, r + 1);
    return -1;
}

/* a UCS4 view of text (its own data when it is 4 bytes wide, else a copy into buf or the heap) */
static const Py_UCS4 *ucs4_of(PyObject *text, Py_UCS4 *buf, Py_ssize_t buflen, Py_UCS4 **heap, Py_ssize_t *n) {
    *heap = NULL;
    if (PyUnicode_READY(text) < 0) return NULL;
    *n = PyUnicode_GET_LENGTH(text);
    if (PyUnicode_KIND(text) == PyUnicode_4BYTE_KIND) return PyUnicode_4BYTE_DATA(text);
    if (*n + 1 <= buflen) return PyUnicode_AsUCS4(text, buf, buflen, 0);
    *heap = PyUnicode_AsUCS4Copy(text);
    return *heap;
}

#define STACK_CHARS 4096

/* mask(text, words, kinds): text with every span of the mask rule blanked (spaces), offsets kept; words[i]
   (lower-case ASCII) followed by the rule kinds[i] are the letter-led alternatives in the rule's order. */
static PyObject *scan_mask(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyUnicode_Check(args[0]) || !PyTuple_Check(args[1]) || !PyTuple_Check(args[2])
            || PyTuple_GET_SIZE(args[1]) != PyTuple_GET_SIZE(args[2]) || PyTuple_GET_SIZE(args[1]) > 32) {
        PyErr_SetString(PyExc_TypeError, "mask(text, words, kinds): a str and two tuples of one length (<= 32)");
        return NULL;
    }
    const char *words[32];
    int kinds[32];
    unsigned char first[128] = {0}; /* the first letters of words */
    Py_ssize_t nw = PyTuple_GET_SIZE(args[1]);
    for (Py_ssize_t k = 0; k < nw; k++) {
        words[k] = PyUnicode_AsUTF8(PyTuple_GET_ITEM(args[1], k));
        kinds[k] = (int)PyLong_AsLong(PyTuple_GET_ITEM(args[2], k));
        if (words[k] == NULL || (kinds[k] == -1 && PyErr_Occurred())) return NULL;
        if (words[k][0] == 0 || (unsigned char)words[k][0] >= 128 || kinds[k] < F_MM || kinds[k] > F_Z) {
            PyErr_SetString(PyExc_ValueError, "mask: empty or non-ASCII word, or unknown rule");
            return NULL;
        }
        first[(unsigned char)words[k][0]] = 1;
    }
    PyObject *text = args[0];
    Py_UCS4 buf[STACK_CHARS], *heap;
    Text xt;
    xt.s = ucs4_of(text, buf, STACK_CHARS, &heap, &xt.n);
    if (xt.s == NULL) return NULL;
    const Text *x = &xt;
    Py_UCS4 *out = NULL; /* the blanked copy, made at the first span */
    for (Py_ssize_t p = 0; p < x->n;) {
        Py_UCS4 c = x->s[p];
        Py_ssize_t end = -1;
        if (p == 0 || !isw(x->s[p - 1])) {
            if (isd(c)) {
                end = mask_digit(x, p);
            } else if (c < 128 && first[c]) {
                for (Py_ssize_t k = 0; k < nw && end < 0; k++) {
                    if ((Py_UCS4)(unsigned char)words[k][0] != c) continue;
                    Py_ssize_t w = lit(x, p, words[k]);
                    if (w >= 0) end = follow(x, kinds[k], w);
                }
            }
        }
        if (end <= p) {
            p++;
            continue;
        }
        if (out == NULL) {
            out = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)(x->n ? x->n : 1));
            if (out == NULL) {
                PyMem_Free(heap);
                return PyErr_NoMemory();
            }
            memcpy(out, x->s, sizeof(Py_UCS4) * (size_t)x->n);
        }
        for (Py_ssize_t i = p; i < end; i++) out[i] = ' ';
        p = end;
    }
    PyMem_Free(heap);
    if (out == NULL) {
        Py_INCREF(text);
        return text;
    }
    PyObject *res = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, out, x->n); /* (the narrowest str) */
    PyMem_Free(out);
    return res;
}

/* ---- numbers: _NUMBER_RE of grok.verify.scan, every backtracking alternative in the regex's order ---------- */

typedef struct {
    Py_ssize_t e0, e1;       /* group e, or e0 = -1 */
    Py_ssize_t b0, b1;       /* group b, or b0 = -1 */
    Py_ssize_t unit;         /* index in units, or -1 */
    Py_ssize_t end;
} NumMatch;

typedef struct {
    const Text *x;
    PyObject *units; /* tuple of str, in the alternation's order */
    NumMatch m;
} NumState;

static inline int num_end_ok(const Text *x, Py_ssize_t i) {
    Py_UCS4 c = AT(i);
    return !(isw(c) || c == 0xB3 || c == 0xB2); /* (?![\w³²]) */
}

static int unit_at(PyObject *u, const Text *x, Py_ssize_t i, Py_ssize_t *end) {
    Py_ssize_t len = PyUnicode_GET_LENGTH(u);
    if (i + len > x->n) return 0;
    int kind = PyUnicode_KIND(u);
    const void *data = PyUnicode_DATA(u);
    for (Py_ssize_t k = 0; k < len; k++) {
        if (PyUnicode_READ(kind, data, k) != x->s[i + k]) return 0;
    }
    *end = i + len;
    return 1;
}

/* (?:\s*(?P<unit>...))?(?![\w³²]) from i */
static int num_unit(NumState *st, Py_ssize_t i) {
    const Text *x = st->x;
    Py_ssize_t t = spaces(x, i), end;
    Py_ssize_t nu = PyTuple_GET_SIZE(st->units);
    for (Py_ssize_t k = 0; k < nu; k++) {
        if (unit_at(PyTuple_GET_ITEM(st->units, k), x, t, &end) && num_end_ok(x, end)) {
            st->m.unit = k;
            st->m.end = end;
            return 1;
        }
    }
    if (num_end_ok(x, i)) {
        st->m.unit = -1;
        st->m.end = i;
        return 1;
    }
    return 0;
}

/* \d+(?:\.\d+)? from i (a digit), each shorter form in turn, then cont */
#define EACH_DECIMAL(i, END, BODY)                                                                  \
    do {                                                                                            \
        Py_ssize_t int_max_ = digits(x, (i));                                                       \
        for (Py_ssize_t ie_ = int_max_; ie_ > (i); ie_--) {                                         \
            if (ie_ == int_max_ && AT(ie_) == '.' && isd(AT(ie_ + 1))) {                            \
                Py_ssize_t fmax_ = digits(x, ie_ + 1);                                              \
                for (Py_ssize_t fe_ = fmax_; fe_ > ie_ + 1; fe_--) {                                \
                    Py_ssize_t END = fe_;                                                           \
                    BODY                                                                            \
                }                                                                                   \
            }                                                                                       \
            {                                                                                       \
                Py_ssize_t END = ie_;                                                               \
                BODY                                                                                \
            }                                                                                       \
        }                                                                                           \
    } while (0)

/* (?:\s*(?:–|—|-|to|and)\s*(?P<b>\d+(?:\.\d+)?))? then the unit */
static int num_range(NumState *st, Py_ssize_t i) {
    const Text *x = st->x;
    Py_ssize_t t = spaces(x, i), c = -1;
    Py_UCS4 ch = AT(t);
    if (ch == 0x2013 || ch == 0x2014 || ch == '-') c = t + 1;
    else if ((c = lit(x, t, "to")) < 0) c = lit(x, t, "and");
    if (c >= 0) {
        Py_ssize_t b0 = spaces(x, c);
        if (isd(AT(b0))) {
            EACH_DECIMAL(b0, b1, {
                st->m.b0 = b0;
                st->m.b1 = b1;
                if (num_unit(st, b1)) return 1;
            });
        }
    }
    st->m.b0 = -1;
    return num_unit(st, i);
}

static int is_superscript(Py_UCS4 c) {
    return c == 0x2070 || c == 0xB9 || c == 0xB2 || c == 0xB3 || (c >= 0x2074 && c <= 0x2079);
}

/* (?P<e>e[+-]?\d+|\s*[×x]\s*10(?:\^\s*[+\-−]?\d+|[⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+))? then the range */
static int num_exp(NumState *st, Py_ssize_t i) {
    const Text *x = st->x;
    st->m.e0 = i;
    if (AT(i) == 'e') {
        Py_ssize_t d = i + 1;
        if (AT(d) == '+' || AT(d) == '-') d++;
        if (isd(AT(d))) {
            for (Py_ssize_t e = digits(x, d); e > d; e--) {
                st->m.e1 = e;
                if (num_range(st, e)) return 1;
            }
        }
    }
    Py_ssize_t t = spaces(x, i);
    if (AT(t) == 0xD7 || AT(t) == 'x') {
        Py_ssize_t ten = lit(x, spaces(x, t + 1), "10");
        if (ten >= 0) {
            if (AT(ten) == '^') {
                Py_ssize_t d = spaces(x, ten + 1);
                if (AT(d) == '+' || AT(d) == '-' || AT(d) == 0x2212) d++;
                if (isd(AT(d))) {
                    for (Py_ssize_t e = digits(x, d); e > d; e--) {
                        st->m.e1 = e;
                        if (num_range(st, e)) return 1;
                    }
                }
            } else {
                Py_ssize_t d = ten;
                if (AT(d) == 0x207B || AT(d) == 0x207A) d++;
                Py_ssize_t e = d;
                while (is_superscript(AT(e))) e++;
                for (; e > d; e--) {
                    st->m.e1 = e;
                    if (num_range(st, e)) return 1;
                }
            }
        }
    }
    st->m.e0 = -1;
    return num_range(st, i);
}

static PyObject *sub_or_none(PyObject *text, Py_ssize_t a, Py_ssize_t b) {
    if (a < 0) Py_RETURN_NONE;
    return PyUnicode_Substring(text, a, b);
}

/* numbers(text, units): [(start, end, whole, a, e, b, unit), ...] as finditer of _NUMBER_RE gives
   (m.span(), m.group(0), *m.groups()); units: the unit alternation's words in its order. */
static PyObject *scan_numbers(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "numbers(text, units): a str and a tuple of str");
        return NULL;
    }
    PyObject *text = args[0], *units = args[1];
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(units); k++) {
        PyObject *u = PyTuple_GET_ITEM(units, k);
        if (!PyUnicode_Check(u) || PyUnicode_READY(u) < 0 || PyUnicode_GET_LENGTH(u) == 0) {
            PyErr_SetString(PyExc_TypeError, "numbers: units must be non-empty str");
            return NULL;
        }
    }
    Py_UCS4 buf[STACK_CHARS], *heap;
    Text xt;
    xt.s = ucs4_of(text, buf, STACK_CHARS, &heap, &xt.n);
    if (xt.s == NULL) return NULL;
    const Text *x = &xt;
    PyObject *out = PyList_New(0);
    NumState st;
    st.x = x;
    st.units = units;
    for (Py_ssize_t p = 0; out != NULL && p < x->n;) {
        Py_UCS4 c = x->s[p];
        if (!isd(c) || (p > 0 && (isw(x->s[p - 1]) || x->s[p - 1] == '.'))) {
            p++;
            continue;
        }
        Py_ssize_t a_end = -1;
        EACH_DECIMAL(p, ae, {
            if (num_exp(&st, ae)) {
                a_end = ae;
                goto found;
            }
        });
    found:
        if (a_end < 0) {
            p++;
            continue;
        }
        NumMatch m = st.m;
        PyObject *item = PyTuple_New(7);
        if (item == NULL) { Py_CLEAR(out); break; }
        PyObject *unit = m.unit >= 0 ? PyTuple_GET_ITEM(units, m.unit) : Py_None;
        Py_INCREF(unit);
        PyTuple_SET_ITEM(item, 0, PyLong_FromSsize_t(p));
        PyTuple_SET_ITEM(item, 1, PyLong_FromSsize_t(m.end));
        PyTuple_SET_ITEM(item, 2, PyUnicode_Substring(text, p, m.end));
        PyTuple_SET_ITEM(item, 3, PyUnicode_Substring(text, p, a_end));
        PyTuple_SET_ITEM(item, 4, sub_or_none(text, m.e0, m.e1));
        PyTuple_SET_ITEM(item, 5, sub_or_none(text, m.b0, m.b1));
        PyTuple_SET_ITEM(item, 6, unit);
        int bad = 0;
        for (int k = 0; k < 7; k++) bad |= PyTuple_GET_ITEM(item, k) == NULL;
        if (bad || PyList_Append(out, item) < 0) { Py_DECREF(item); Py_CLEAR(out); break; }
        Py_DECREF(item);
        p = m.end;
    }
    PyMem_Free(heap);
    return out;
}


/* (a, b), taking over both references (NULL and both released on failure) */
static PyObject *pair_of(PyObject *a, PyObject *b) {
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(a);
        Py_DECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    return t;
}

/* by_clause(matches, spans): (per, dirty) of grok.verify.scan.by_clause: the matches (tuples whose first two
   items are their span, in order) handed to the clauses (spans: [(start, end), ...] in order) they start in;
   per[ci] None where no match starts in clause ci, else the matches lying inside it; dirty: the clauses a
   match crosses into or out of. */
static PyObject *scan_by_clause(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyList_Check(args[0]) || !PyList_Check(args[1]) || PyList_GET_SIZE(args[1]) == 0) {
        PyErr_SetString(PyExc_TypeError, "by_clause(matches, spans): two lists, spans not empty");
        return NULL;
    }
    PyObject *found = args[0], *spans = args[1];
    Py_ssize_t n = PyList_GET_SIZE(spans), nm = PyList_GET_SIZE(found);
    Py_ssize_t *st = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (size_t)n);
    if (st == NULL) return PyErr_NoMemory();
    Py_ssize_t *en = st + n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *sp = PyList_GET_ITEM(spans, i);
        if (!PyTuple_Check(sp) || PyTuple_GET_SIZE(sp) < 2) {
            PyMem_Free(st);
            PyErr_SetString(PyExc_TypeError, "by_clause: spans are (start, end) tuples");
            return NULL;
        }
        st[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(sp, 0));
        en[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(sp, 1));
    }
    PyObject *per = PyList_New(n), *dirty = PySet_New(NULL);
    if (PyErr_Occurred() || per == NULL || dirty == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(Py_None);
        PyList_SET_ITEM(per, i, Py_None);
    }
    Py_ssize_t ci = 0;
    for (Py_ssize_t j = 0; j < nm; j++) {
        PyObject *m = PyList_GET_ITEM(found, j);
        if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) < 2) {
            PyErr_SetString(PyExc_TypeError, "by_clause: matches are tuples (start, end, ...)");
            goto fail;
        }
        Py_ssize_t s = PyLong_AsSsize_t(PyTuple_GET_ITEM(m, 0)), e = PyLong_AsSsize_t(PyTuple_GET_ITEM(m, 1));
        if (PyErr_Occurred()) goto fail;
        while (ci + 1 < n && st[ci + 1] <= s) ci++; /* the clause of s (bisect_right(starts, s) - 1) */
        PyObject *lst = PyList_GET_ITEM(per, ci);
        if (lst == Py_None) {
            lst = PyList_New(0);
            if (lst == NULL) goto fail;
            PyList_SET_ITEM(per, ci, lst); /* (steals lst; drops the None's reference below) */
            Py_DECREF(Py_None);
        }
        if (e <= en[ci]) {
            if (PyList_Append(lst, m) < 0) goto fail;
        } else {
            for (Py_ssize_t k = s <= en[ci] ? ci : ci + 1; k < n && st[k] <= e; k++) {
                PyObject *kk = PyLong_FromSsize_t(k);
                if (kk == NULL || PySet_Add(dirty, kk) < 0) {
                    Py_XDECREF(kk);
                    goto fail;
                }
                Py_DECREF(kk);
            }
        }
    }
    PyMem_Free(st);
    return pair_of(per, dirty);
fail:
    PyMem_Free(st);
    Py_XDECREF(per);
    Py_XDECREF(dirty);
    return NULL;
}


/* gather(cache, words): the entries of words in cache (a dict word -> (bytes, list)) joined: (the bytes
   concatenated, the lists' items in one list); or, when a word has no entry, the list of those words (in
   order, repeats kept) and nothing joined. */
static PyObject *scan_gather(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "gather(cache, words): a dict and a list");
        return NULL;
    }
    PyObject *cache = args[0], *words = args[1], *missing = NULL;
    Py_ssize_t n = PyList_GET_SIZE(words), nbytes = 0, nitems = 0;
    PyObject **entries = PyMem_Malloc(sizeof(PyObject *) * (size_t)(n ? n : 1));
    if (entries == NULL) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) { /* borrowed: nothing below runs Python code that could change cache */
        PyObject *w = PyList_GET_ITEM(words, i);
        PyObject *e = PyUnicode_CheckExact(w) ? PyDict_GetItemWithError(cache, w) : NULL;
        if (e == NULL) {
            if (PyErr_Occurred()) goto fail;
            if (!PyUnicode_CheckExact(w)) {
                PyErr_SetString(PyExc_TypeError, "gather: words must be str");
                goto fail;
            }
            if (missing == NULL && (missing = PyList_New(0)) == NULL) goto fail;
            if (PyList_Append(missing, w) < 0) goto fail;
            continue;
        }
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(e, 0))
                || !PyList_CheckExact(PyTuple_GET_ITEM(e, 1))) {
            PyErr_SetString(PyExc_TypeError, "gather: cache entries are (bytes, list)");
            goto fail;
        }
        entries[i] = e;
        nbytes += PyBytes_GET_SIZE(PyTuple_GET_ITEM(e, 0));
        nitems += PyList_GET_SIZE(PyTuple_GET_ITEM(e, 1));
    }
    if (missing != NULL) {
        PyMem_Free(entries);
        return missing;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, nbytes), *l = PyList_New(nitems);
    if (b == NULL || l == NULL) {
        Py_XDECREF(b);
        Py_XDECREF(l);
        goto fail;
    }
    char *dst = PyBytes_AS_STRING(b);
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *bs = PyTuple_GET_ITEM(entries[i], 0), *ts = PyTuple_GET_ITEM(entries[i], 1);
        memcpy(dst, PyBytes_AS_STRING(bs), (size_t)PyBytes_GET_SIZE(bs));
        dst += PyBytes_GET_SIZE(bs);
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(ts); j++) {
            PyObject *x = PyList_GET_ITEM(ts, j);
            Py_INCREF(x);
            PyList_SET_ITEM(l, k++, x);
        }
    }
    PyMem_Free(entries);
    return pair_of(b, l);
fail:
    PyMem_Free(entries);
    Py_XDECREF(missing);
    return NULL;
}

/* index_find(slots, values, keys, bits, out): where each of keys is in values, by grok.eval.text.IntIndex's open
   addressing (slots: int32, 2**bits of them, -1 empty, else an index in values; values, keys, out: int64; all
   C-contiguous buffers): a key's slot is (key x 0x9E3779B97F4A7C15 mod 2**64) >> (64 - bits), then the next
   ones (linear probing) until the slot holds the key (out: its index in values) or is empty (out: -1). The
   same positions as IntIndex.find's whole-array probing. */
static int int_buffer(PyObject *o, Py_buffer *b, Py_ssize_t itemsize, int writable, const char *what) {
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    char f = b->format ? b->format[b->format[0] == '<' || b->format[0] == '=' || b->format[0] == '@'] : 'B';
    int ok = b->itemsize == itemsize && (itemsize == 4 ? (f == 'i' || (f == 'l' && sizeof(long) == 4))
                                                       : (f == 'q' || (f == 'l' && sizeof(long) == 8)));
    if (!ok) {
        PyBuffer_Release(b);
        PyErr_Format(PyExc_TypeError, "index_find: %s must be a C-contiguous int%d array", what, (int)(8 * itemsize));
        return -1;
    }
    return 0;
}

static PyObject *scan_index_find(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "index_find(slots, values, keys, bits, out)");
        return NULL;
    }
    long bits = PyLong_AsLong(args[3]);
    if (bits == -1 && PyErr_Occurred()) return NULL;
    if (bits < 1 || bits > 62) {
        PyErr_SetString(PyExc_ValueError, "index_find: bits must be in 1..62");
        return NULL;
    }
    Py_buffer bs, bv, bk, bo;
    if (int_buffer(args[0], &bs, 4, 0, "slots") < 0) return NULL;
    if (int_buffer(args[1], &bv, 8, 0, "values") < 0) goto fail_s;
    if (int_buffer(args[2], &bk, 8, 0, "keys") < 0) goto fail_v;
    if (int_buffer(args[4], &bo, 8, 1, "out") < 0) goto fail_k;
    const int32_t *slots = bs.buf;
    const int64_t *values = bv.buf, *keys = bk.buf;
    int64_t *out = bo.buf;
    Py_ssize_t n_slots = bs.len / 4, n_values = bv.len / 8, n = bk.len / 8;
    if (n_slots != ((Py_ssize_t)1 << bits) || bo.len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "index_find: 2**bits slots and one out per key");
        goto fail;
    }
    uint64_t mask = ((uint64_t)1 << bits) - 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t h = ((uint64_t)keys[i] * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - bits);
        int64_t found = -1;
        for (Py_ssize_t probes = 0; probes < n_slots; probes++, h = (h + 1) & mask) {
            int32_t s = slots[h];
            if (s < 0) break;
            if (s >= n_values) {
                PyErr_SetString(PyExc_ValueError, "index_find: a slot points past values");
                goto fail;
            }
            if (values[s] == keys[i]) {
                found = s;
                break;
            }
        }
        out[i] = found;
    }
    PyBuffer_Release(&bo);
    PyBuffer_Release(&bk);
    PyBuffer_Release(&bv);
    PyBuffer_Release(&bs);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&bo);
fail_k:
    PyBuffer_Release(&bk);
fail_v:
    PyBuffer_Release(&bv);
fail_s:
    PyBuffer_Release(&bs);
    return NULL;
}

/* lcs(candidate, vocab, ids, bits, n): the length of the longest common subsequence of the tokens of candidate (a
   list) and a reference of n tokens (grok.eval.text.RougeRef): vocab maps a token to its id, ids (bytes: sorted
   int32) are the reference's token ids and row j of bits (bytes: little-endian, 8 x ceil(n / 64) a row) the
   positions of token ids[j]. grok.eval.text.lcs_with's recurrence (Hyyro 2004) v = (v + u) | (v ^ u), u = v & m,
   over 64-bit words with the carry taken across them; tokens not in the reference leave v as it is. Carries only
   move up, so the bits above n never reach the low n; v is masked at the end. */
static inline int popcount64(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_popcountll(x);
#else
    int c = 0;
    for (; x; x &= x - 1) c++;
    return c;
#endif
}

static PyObject *scan_lcs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyList_Check(args[0]) || !PyDict_Check(args[1]) || !PyBytes_CheckExact(args[2])
            || !PyBytes_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "lcs(candidate, vocab, ids, bits, n): a list, a dict, bytes, bytes, an int");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[4]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "lcs: n must be >= 0");
        return NULL;
    }
    PyObject *cand = args[0], *vocab = args[1];
    Py_ssize_t words = (n + 63) / 64, n_ids = PyBytes_GET_SIZE(args[2]) / 4;
    if (PyBytes_GET_SIZE(args[2]) % 4 || PyBytes_GET_SIZE(args[3]) != n_ids * 8 * words) {
        PyErr_SetString(PyExc_ValueError, "lcs: ids are int32 and bits one row of 8 x ceil(n / 64) bytes an id");
        return NULL;
    }
    if (n == 0 || PyList_GET_SIZE(cand) == 0) return PyLong_FromLong(0);
    const unsigned char *idb = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    const unsigned char *bits = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    uint64_t stack[64], *v = words <= 64 ? stack : PyMem_Malloc(sizeof(uint64_t) * (size_t)words);
    if (v == NULL) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < words; i++) v[i] = ~(uint64_t)0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(cand); k++) {
        PyObject *id = PyDict_GetItemWithError(vocab, PyList_GET_ITEM(cand, k)); /* borrowed; no Python code runs */
        if (id == NULL) {
            if (PyErr_Occurred()) goto fail;
            continue;
        }
        long t = PyLong_AsLong(id);
        if (t == -1 && PyErr_Occurred()) goto fail;
        Py_ssize_t lo = 0, hi = n_ids; /* the id's row: a binary search of the sorted ids */
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) >> 1;
            int32_t x;
            memcpy(&x, idb + 4 * mid, 4);
            if (x < t) lo = mid + 1; else hi = mid;
        }
        int32_t found;
        if (lo == n_ids || (memcpy(&found, idb + 4 * lo, 4), found != t)) continue;
        const unsigned char *mb = bits + 8 * words * lo;
        uint64_t carry = 0;
        for (Py_ssize_t i = 0; i < words; i++) {
            uint64_t mw = 0;
            for (int b = 7; b >= 0; b--) mw = (mw << 8) | mb[8 * i + b]; /* little-endian, any alignment */
            uint64_t vi = v[i], u = vi & mw, s = vi + u, c1 = s < vi, s2 = s + carry, c2 = s2 < s;
            carry = c1 | c2;
            v[i] = s2 | (vi ^ u);
        }
    }
    Py_ssize_t ones = 0;
    for (Py_ssize_t i = 0; i < words; i++) {
        uint64_t w = v[i];
        if (i == words - 1 && n % 64) w &= (((uint64_t)1) << (n % 64)) - 1;
        ones += popcount64(w);
    }
    if (v != stack) PyMem_Free(v);
    return PyLong_FromSsize_t(n - ones);
fail:
    if (v != stack) PyMem_Free(v);
    return NULL;
}

/* count_rows(draws, out): for each row r of draws (int32, b x n, C-contiguous, values in [0, n)), how often each
   value occurs in it, added to row r of out (float32, b x n, C-contiguous, zeroed by the caller): the bootstrap's
   weights (grok.eval.score.resample_weights), as numpy's bincount of the rows' draws counts them. */
static PyObject *scan_count_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "count_rows(draws, out)");
        return NULL;
    }
    Py_buffer bd, bo;
    if (PyObject_GetBuffer(args[0], &bd, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &bo, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&bd);
        return NULL;
    }
    const char *fd = bd.format ? bd.format + (strchr("<=@", bd.format[0]) != NULL && bd.format[0]) : "B";
    const char *fo = bo.format ? bo.format + (strchr("<=@", bo.format[0]) != NULL && bo.format[0]) : "B";
    if (bd.ndim != 2 || bo.ndim != 2 || bd.itemsize != 4 || bo.itemsize != 4 || strcmp(fd, "i") != 0
            || strcmp(fo, "f") != 0 || bd.shape[0] != bo.shape[0] || bd.shape[1] != bo.shape[1]) {
        PyErr_SetString(PyExc_TypeError, "count_rows: draws an int32 and out a float32 array, C-contiguous, of one "
                                         "(rows, n) shape");
        goto fail;
    }
    Py_ssize_t rows = bd.shape[0], n = bd.shape[1];
    const int32_t *d = bd.buf;
    float *out = bo.buf;
    for (Py_ssize_t r = 0; r < rows; r++) {
        const int32_t *dr = d + r * n;
        float *orow = out + r * n;
        for (Py_ssize_t j = 0; j < n; j++) {
            if (dr[j] < 0 || dr[j] >= n) {
                PyErr_SetString(PyExc_ValueError, "count_rows: a draw outside [0, n)");
                goto fail;
            }
            orow[dr[j]] += 1.0f;
        }
    }
    PyBuffer_Release(&bo);
    PyBuffer_Release(&bd);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&bo);
    PyBuffer_Release(&bd);
    return NULL;
}

static PyMethodDef methods[] = {
    {"compile", (PyCFunction)scan_compile, METH_O, "compile(words) -> the words' trie (a capsule) for words()"},
    {"words", (PyCFunction)(void (*)(void))scan_words, METH_FASTCALL,
     "words(compiled, text, flags) -> [(start, end, word), ...] or a bool (flags & 8)"},
    {"clauses", (PyCFunction)scan_clauses, METH_O, "clauses(text) -> [(start, end), ...]"},
    {"by_clause", (PyCFunction)(void (*)(void))scan_by_clause, METH_FASTCALL,
     "by_clause(matches, spans) -> (per, dirty)"},
    {"gather", (PyCFunction)(void (*)(void))scan_gather, METH_FASTCALL,
     "gather(cache, words) -> (bytes joined, items joined) or [words without an entry]"},
    {"mask", (PyCFunction)(void (*)(void))scan_mask, METH_FASTCALL, "mask(text, words, kinds) -> text blanked"},
    {"numbers", (PyCFunction)(void (*)(void))scan_numbers, METH_FASTCALL,
     "numbers(text, units) -> [(start, end, whole, a, e, b, unit), ...]"},
    {"index_find", (PyCFunction)(void (*)(void))scan_index_find, METH_FASTCALL,
     "index_find(slots, values, keys, bits, out) -> None; out[i]: the index of keys[i] in values, or -1"},
    {"lcs", (PyCFunction)(void (*)(void))scan_lcs, METH_FASTCALL,
     "lcs(candidate, vocab, ids, bits, n) -> the LCS length of candidate's tokens and the reference"},
    {"count_rows", (PyCFunction)(void (*)(void))scan_count_rows, METH_FASTCALL,
     "count_rows(draws, out) -> None; out[r, v] += how often v occurs in draws[r]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cscan", "The verifier's word scans and clause split and grok.eval's lookups, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__cscan(void) {
    for (Py_UCS4 c = 0; c < 128; c++) { /* (NUL is none of them: AT() reads it past the end) */
        ascii_word[c] = (Py_UNICODE_ISALNUM(c) || c == '_') ? 1 : 0;
        ascii_decimal[c] = Py_UNICODE_ISDECIMAL(c) ? 1 : 0;
        ascii_space[c] = Py_UNICODE_ISSPACE(c) ? 1 : 0;
    }
    PyObject *m = PyModule_Create(&module);
    return m;
}
