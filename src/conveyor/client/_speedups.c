/* conveyor.client._speedups: the commonest client calls in C.
 *
 * An optional accelerator for the calls applications make on every request. A
 * FastCall does exactly what the Python fast paths in _client.py do, for the cases
 * they are fast for:
 *
 * - an increment (type_code None): value 1, no sample rate, for a context already
 *   seen: append the context's (name, tags) key to the increments deque;
 * - a count, gauge, histogram, distribution or timing (type_code "c", "g", "h", "d",
 *   "ms"): a finite int or float value, no sample rate, for a context already seen:
 *   append (type, key, value, 1.0) to the general deque;
 *
 * then compare the deque's length with the fork gate and take the rare path
 * (Client._pressure) past it. Tags must be a list, a tuple or None. Anything else,
 * every error included, is handed to the Python method unchanged, so both paths raise
 * the same errors and the Python code stays the one definition of the behaviour. The
 * client installs these objects only while its default sample rate is 1.
 *
 * Each object is installed as the client's instance attribute of the method's name:
 * the lookup `client.gauge` then finds it before the class's method, and calling it
 * costs a vectorcall, no bound method.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

typedef struct {
    PyObject_HEAD
    PyObject *contexts;   /* dict: name -> dict: tags tuple or None -> (name, tags) key */
    PyObject *queue;      /* the deque the call appends to (increments, or the general one) */
    PyObject *append;     /* queue.append, bound once */
    PyObject *gate_view;  /* the fork gate's memoryview (an int64 cell) */
    Py_buffer gate;       /* its buffer: gate.buf is read on every call */
    PyObject *pressure;   /* Client._pressure, bound: the rare path */
    PyObject *fallback;   /* the Python method, bound (Client.gauge...): everything else */
    PyObject *one;        /* the int 1 */
    PyObject *type_code;  /* NULL for an increment; else "c", "g", "h", "d" or "ms" */
    PyObject *rate_one;   /* the float 1.0 queued as the rate */
    vectorcallfunc vectorcall;
} FastCall;

static PyObject *str_value, *str_tags, *str_sample_rate, *str_metric;

static PyObject *
call_fallback(FastCall *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

/* The call's arguments by name; 1 if they are all there and named as the Python
   method names them, 0 if the fallback must take the call (it says what is wrong). */
static int
parse_args(PyObject *const *args, size_t nargsf, PyObject *kwnames, Py_ssize_t required,
           PyObject **metric, PyObject **value, PyObject **tags, PyObject **sample_rate)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs > 4) {
        return 0;
    }
    if (nargs > 0) *metric = args[0];
    if (nargs > 1) *value = args[1];
    if (nargs > 2) *tags = args[2];
    if (nargs > 3) *sample_rate = args[3];
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            PyObject *arg = args[nargs + i];
            /* Keyword names from call sites are interned: identity first. */
            if ((name == str_tags || PyUnicode_Compare(name, str_tags) == 0) && nargs <= 2) {
                *tags = arg;
            } else if ((name == str_value || PyUnicode_Compare(name, str_value) == 0)
                       && nargs <= 1) {
                *value = arg;
            } else if ((name == str_sample_rate || PyUnicode_Compare(name, str_sample_rate) == 0)
                       && nargs <= 3) {
                *sample_rate = arg;
            } else if ((name == str_metric || PyUnicode_Compare(name, str_metric) == 0)
                       && nargs == 0) {
                *metric = arg;
            } else {
                /* An unknown name, or one given twice: Python says how. */
                PyErr_Clear();
                return 0;
            }
        }
    }
    if (*metric == NULL || (required > 1 && *value == NULL)) {
        return 0;
    }
    return 1;
}

/* The context's (name, tags) key, as a new reference; NULL without an error if the
   fallback must take the call (tags in another form, a context not seen yet, an
   unhashable name); NULL with an error if even that failed. */
static PyObject *
find_key(FastCall *self, PyObject *metric, PyObject *tags)
{
    /* Strong references from here: hashing or comparing a tag that is not a str can
       run Python code, which could change the tables under us. */
    PyObject *by_tags = PyDict_GetItemWithError(self->contexts, metric);
    if (by_tags == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_INCREF(by_tags);
    PyObject *key;
    if (PyList_CheckExact(tags)) {
        /* Copied, as the Python path does: a list the caller changes later cannot
           change what was recorded. */
        PyObject *tuple = PyList_AsTuple(tags);
        if (tuple == NULL) {
            Py_DECREF(by_tags);
            return NULL;
        }
        key = PyDict_GetItemWithError(by_tags, tuple);
        Py_XINCREF(key);
        Py_DECREF(tuple);
    } else if (tags == Py_None || PyTuple_CheckExact(tags)) {
        key = PyDict_GetItemWithError(by_tags, tags);
        Py_XINCREF(key);
    } else {
        key = NULL;  /* a dict, or bad tags */
    }
    Py_DECREF(by_tags);
    if (key == NULL) {
        PyErr_Clear();
    }
    return key;
}

/* Append `item` (a new reference, consumed) and take the rare path past the gate. */
static PyObject *
push(FastCall *self, PyObject *item)
{
    PyObject *result = PyObject_Vectorcall(self->append, &item, 1, NULL);
    Py_DECREF(item);
    if (result == NULL) {
        return NULL;
    }
    Py_DECREF(result);
    Py_ssize_t depth = PyObject_Length(self->queue);
    if (depth < 0) {
        return NULL;
    }
    if (depth >= *(volatile int64_t *)self->gate.buf) {
        return PyObject_CallOneArg(self->pressure, self->queue);
    }
    Py_RETURN_NONE;
}

static int
cleared(FastCall *self)
{
    if (self->fallback == NULL) {
        /* tp_clear ran: the collector is taking the client apart (a finaliser in
           the same cycle called it). Nothing is left to record into. */
        PyErr_SetString(PyExc_RuntimeError, "this conveyor Client is being garbage-collected");
        return 1;
    }
    return 0;
}

static PyObject *
fast_increment(FastCall *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *metric = NULL, *value = self->one, *tags = Py_None, *sample_rate = Py_None;
    if (cleared(self)) {
        return NULL;
    }
    if (!parse_args(args, nargsf, kwnames, 1, &metric, &value, &tags, &sample_rate)
        || value != self->one || sample_rate != Py_None) {
        return call_fallback(self, args, nargsf, kwnames);
    }
    PyObject *key = find_key(self, metric, tags);
    if (key == NULL) {
        return PyErr_Occurred() ? NULL : call_fallback(self, args, nargsf, kwnames);
    }
    return push(self, key);
}

static PyObject *
fast_metric(FastCall *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *metric = NULL, *value = NULL, *tags = Py_None, *sample_rate = Py_None;
    if (cleared(self)) {
        return NULL;
    }
    if (!parse_args(args, nargsf, kwnames, 2, &metric, &value, &tags, &sample_rate)
        || sample_rate != Py_None) {
        return call_fallback(self, args, nargsf, kwnames);
    }
    /* An int (not a bool: PyLong_CheckExact) or a finite float; anything else gets
       the Python method's checks and its error. */
    if (!PyLong_CheckExact(value)
        && !(PyFloat_CheckExact(value) && isfinite(PyFloat_AS_DOUBLE(value)))) {
        return call_fallback(self, args, nargsf, kwnames);
    }
    PyObject *key = find_key(self, metric, tags);
    if (key == NULL) {
        return PyErr_Occurred() ? NULL : call_fallback(self, args, nargsf, kwnames);
    }
    PyObject *item = PyTuple_Pack(4, self->type_code, key, value, self->rate_one);
    Py_DECREF(key);
    if (item == NULL) {
        return NULL;
    }
    return push(self, item);
}

static PyObject *
FastCall_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"type_code", "contexts", "queue", "gate", "pressure", "fallback",
                             NULL};
    PyObject *type_code, *contexts, *queue, *gate, *pressure, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!OOOO:FastCall", kwlist, &type_code,
                                     &PyDict_Type, &contexts, &queue, &gate, &pressure,
                                     &fallback)) {
        return NULL;
    }
    if (type_code != Py_None && !PyUnicode_CheckExact(type_code)) {
        PyErr_SetString(PyExc_TypeError, "type_code must be None (increment) or a str");
        return NULL;
    }
    FastCall *self = (FastCall *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (PyObject_GetBuffer(gate, &self->gate, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    if (self->gate.len < (Py_ssize_t)sizeof(int64_t) || self->gate.itemsize != sizeof(int64_t)
        || self->gate.format == NULL || strcmp(self->gate.format, "q") != 0) {
        PyBuffer_Release(&self->gate);
        self->gate.obj = NULL;
        Py_DECREF(self);
        PyErr_SetString(PyExc_TypeError, "gate must be a memoryview cast to 'q'");
        return NULL;
    }
    self->append = PyObject_GetAttrString(queue, "append");
    if (self->append == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->contexts = Py_NewRef(contexts);
    self->queue = Py_NewRef(queue);
    self->gate_view = Py_NewRef(gate);
    self->pressure = Py_NewRef(pressure);
    self->fallback = Py_NewRef(fallback);
    self->one = PyLong_FromLong(1);
    self->rate_one = PyFloat_FromDouble(1.0);
    if (self->one == NULL || self->rate_one == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    if (type_code == Py_None) {
        self->vectorcall = (vectorcallfunc)fast_increment;
    } else {
        self->type_code = Py_NewRef(type_code);
        self->vectorcall = (vectorcallfunc)fast_metric;
    }
    return (PyObject *)self;
}

static int
FastCall_traverse(FastCall *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->contexts);
    Py_VISIT(self->queue);
    Py_VISIT(self->append);
    Py_VISIT(self->gate_view);
    Py_VISIT(self->pressure);
    Py_VISIT(self->fallback);
    return 0;
}

static int
FastCall_clear(FastCall *self)
{
    Py_CLEAR(self->contexts);
    Py_CLEAR(self->queue);
    Py_CLEAR(self->append);
    Py_CLEAR(self->pressure);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
FastCall_dealloc(FastCall *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    FastCall_clear(self);
    if (self->gate.obj != NULL) {
        PyBuffer_Release(&self->gate);
    }
    Py_CLEAR(self->gate_view);
    Py_CLEAR(self->one);
    Py_CLEAR(self->type_code);
    Py_CLEAR(self->rate_one);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
FastCall_call(FastCall *self, PyObject *args, PyObject *kwargs)
{
    return PyVectorcall_Call((PyObject *)self, args, kwargs);
}

static PyMemberDef FastCall_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(FastCall, vectorcall), READONLY},
    /* The Python method it stands for: inspect.signature() and help() follow it. */
    {"__wrapped__", T_OBJECT, offsetof(FastCall, fallback), READONLY},
    {NULL},
};

static PyType_Slot FastCall_slots[] = {
    {Py_tp_doc, "A client method's fast path in C, for known contexts (see _speedups.c)."},
    {Py_tp_new, FastCall_new},
    {Py_tp_dealloc, FastCall_dealloc},
    {Py_tp_traverse, FastCall_traverse},
    {Py_tp_clear, FastCall_clear},
    {Py_tp_call, FastCall_call},
    {Py_tp_members, FastCall_members},
    {0, NULL},
};

static PyType_Spec FastCall_spec = {
    .name = "conveyor.client._speedups.FastCall",
    .basicsize = sizeof(FastCall),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = FastCall_slots,
};

static int
speedups_exec(PyObject *module)
{
    str_value = PyUnicode_InternFromString("value");
    str_tags = PyUnicode_InternFromString("tags");
    str_sample_rate = PyUnicode_InternFromString("sample_rate");
    str_metric = PyUnicode_InternFromString("metric");
    if (!str_value || !str_tags || !str_sample_rate || !str_metric) {
        return -1;
    }
    PyObject *type = PyType_FromModuleAndSpec(module, &FastCall_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "FastCall", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    Py_DECREF(type);
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* The keyword names are process-wide statics: one interpreter only. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "conveyor.client._speedups",
    .m_doc = "The commonest client calls in C: an optional accelerator (see _speedups.c).",
    .m_size = 0,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
