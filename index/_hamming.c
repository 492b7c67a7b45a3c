/* The in-bucket scan's kernel: exact top-k by Hamming distance over a query's probed buckets.
 *
 * The buckets are the inverted lists of the FAISS IndexBinaryIVF in index/scan.py, read in place
 * (code and id pointers). A query's lists are scanned in probe order, each in list order, and the
 * result is ordered by (distance, order met), as FAISS's counting scanner orders it. That scanner
 * only lowers its distance threshold when a single distance has collected k codes; among the codes of
 * nearby buckets, which are all close to the query, it therefore stores most codes it meets. Here the
 * threshold is the smallest distance d with at least k codes stored at distances <= d: a code at that
 * distance or beyond can no longer enter the result (it would come after k codes already met), so
 * almost every code costs one XOR, one popcount and one comparison.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline int distance(const uint8_t *a, const uint8_t *b, Py_ssize_t code_size) {
    int d = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= code_size; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        d += __builtin_popcountll(x ^ y);
    }
    for (; i < code_size; i++) d += __builtin_popcount((unsigned)(a[i] ^ b[i]));
    return d;
}

/* One query; counts has bits + 1 slots, store and where (bits + 1) * k. Writes k distances and ids, -1 past
 * the end, and, when out_codes is not NULL, the k codes (zeros past the end), for a re-ranker. */
static void scan_query(const uint8_t *restrict query, const int64_t *restrict probes, Py_ssize_t n_probes,
                       const int64_t *restrict code_ptrs, const int64_t *restrict id_ptrs,
                       const int64_t *restrict sizes, Py_ssize_t code_size, Py_ssize_t k, int *restrict counts,
                       int64_t *restrict store, const uint8_t **restrict where, int32_t *restrict out_d,
                       int64_t *restrict out_id, uint8_t *restrict out_codes) {
    const int bits = (int)(code_size * 8);
    memset(counts, 0, sizeof(int) * (size_t)(bits + 1));
    int threshold = bits + 1; /* codes at distance >= threshold are rejected */
    Py_ssize_t below = 0;     /* codes stored at distances < threshold */
    for (Py_ssize_t p = 0; p < n_probes; p++) {
        const int64_t list = probes[p];
        const uint8_t *restrict codes = (const uint8_t *)(intptr_t)code_ptrs[list];
        const int64_t *restrict ids = (const int64_t *)(intptr_t)id_ptrs[list];
        const int64_t size = sizes[list];
        if (code_size == 8) { /* the common 64-bit code: one word */
            uint64_t q;
            memcpy(&q, query, 8);
            for (int64_t j = 0; j < size; j++) {
                uint64_t c;
                memcpy(&c, codes + 8 * j, 8);
                const int d = __builtin_popcountll(c ^ q);
                if (d < threshold) {
                    where[(Py_ssize_t)d * k + counts[d]] = codes + 8 * j;
                    store[(Py_ssize_t)d * k + counts[d]++] = ids[j];
                    if (++below >= k) {
                        do below -= counts[--threshold];
                        while (below >= k);
                    }
                }
            }
        } else {
            for (int64_t j = 0; j < size; j++) {
                const int d = distance(codes + code_size * j, query, code_size);
                if (d < threshold) {
                    where[(Py_ssize_t)d * k + counts[d]] = codes + code_size * j;
                    store[(Py_ssize_t)d * k + counts[d]++] = ids[j];
                    if (++below >= k) {
                        do below -= counts[--threshold];
                        while (below >= k);
                    }
                }
            }
        }
    }
    Py_ssize_t got = 0;
    for (int d = 0; d <= bits && got < k; d++)
        for (int i = 0; i < counts[d] && got < k; i++, got++) {
            out_d[got] = d;
            out_id[got] = store[(Py_ssize_t)d * k + i];
            if (out_codes) memcpy(out_codes + got * code_size, where[(Py_ssize_t)d * k + i], (size_t)code_size);
        }
    for (; got < k; got++) {
        out_d[got] = -1;
        out_id[got] = -1;
        if (out_codes) memset(out_codes + got * code_size, 0, (size_t)code_size);
    }
}

static int check(Py_buffer *buffer, Py_ssize_t expected, const char *name) {
    if (buffer->len != expected) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", name, buffer->len, expected);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(topk_doc,
             "topk(queries, probes, code_ptrs, id_ptrs, sizes, code_size, k, out_distances, out_ids[, out_codes])\n\n"
             "Top k of each query over its probed lists. queries: uint8 (nq, code_size); probes: int64 (nq, p);\n"
             "code_ptrs, id_ptrs, sizes: int64 per list (addresses of its codes and int64 ids, its length);\n"
             "out_distances: int32 (nq, k) and out_ids: int64 (nq, k), written; out_codes, optional: uint8\n"
             "(nq, k, code_size), the results' codes (zeros past the end), for a re-ranker.");

static PyObject *topk(PyObject *self, PyObject *args) {
    Py_buffer queries, probes, code_ptrs, id_ptrs, sizes, out_d, out_id;
    Py_buffer out_codes = {.buf = NULL, .obj = NULL, .len = 0};
    Py_ssize_t code_size, k;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*nnw*w*|w*", &queries, &probes, &code_ptrs, &id_ptrs, &sizes, &code_size,
                          &k, &out_d, &out_id, &out_codes))
        return NULL;
    PyObject *result = NULL;
    int *counts = NULL;
    int64_t *store = NULL;
    const uint8_t **where = NULL;
    if (code_size < 1 || k < 1 || queries.len % code_size) {
        PyErr_SetString(PyExc_ValueError, "code_size and k must be positive and queries whole codes");
        goto done;
    }
    const Py_ssize_t nq = queries.len / code_size;
    const Py_ssize_t n_lists = sizes.len / 8;
    if (nq == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    if (probes.len % (8 * nq)) {
        PyErr_SetString(PyExc_ValueError, "probes must hold the same number of lists for every query");
        goto done;
    }
    const Py_ssize_t n_probes = probes.len / 8 / nq;
    if (!check(&code_ptrs, 8 * n_lists, "code_ptrs") || !check(&id_ptrs, 8 * n_lists, "id_ptrs") ||
        !check(&out_d, 4 * nq * k, "out_distances") || !check(&out_id, 8 * nq * k, "out_ids") ||
        (out_codes.buf && !check(&out_codes, nq * k * code_size, "out_codes")))
        goto done;
    const int64_t *probe = (const int64_t *)probes.buf;
    for (Py_ssize_t i = 0; i < nq * n_probes; i++)
        if (probe[i] < 0 || probe[i] >= n_lists) {
            PyErr_Format(PyExc_ValueError, "probe %lld is not a list (0..%zd)", (long long)probe[i], n_lists - 1);
            goto done;
        }
    const Py_ssize_t bits = code_size * 8;
    counts = malloc(sizeof(int) * (size_t)(bits + 1));
    store = malloc(sizeof(int64_t) * (size_t)((bits + 1) * k));
    where = malloc(sizeof(uint8_t *) * (size_t)((bits + 1) * k));
    if (!counts || !store || !where) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t q = 0; q < nq; q++)
        scan_query((const uint8_t *)queries.buf + q * code_size, probe + q * n_probes, n_probes,
                   (const int64_t *)code_ptrs.buf, (const int64_t *)id_ptrs.buf, (const int64_t *)sizes.buf, code_size,
                   k, counts, store, where, (int32_t *)out_d.buf + q * k, (int64_t *)out_id.buf + q * k,
                   out_codes.buf ? (uint8_t *)out_codes.buf + q * k * code_size : NULL);
    Py_END_ALLOW_THREADS;
    result = Py_None;
    Py_INCREF(result);
done:
    free(counts);
    free(store);
    free(where);
    PyBuffer_Release(&queries);
    PyBuffer_Release(&probes);
    PyBuffer_Release(&code_ptrs);
    PyBuffer_Release(&id_ptrs);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&out_d);
    PyBuffer_Release(&out_id);
    if (out_codes.obj) PyBuffer_Release(&out_codes);
    return result;
}

static PyMethodDef methods[] = {{"topk", topk, METH_VARARGS, topk_doc}, {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "index._hamming",
                                    "Exact top-k Hamming scan over FAISS inverted lists (see index/scan.py).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__hamming(void) { return PyModule_Create(&module); }
