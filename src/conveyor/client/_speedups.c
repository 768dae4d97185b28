/* conveyor.client._speedups: the value-1 increment in C.
 *
 * An optional accelerator for the one call applications make most often. It does
 * exactly what the Python fast path in _client.py does (Client.increment, value 1, no
 * sample rate, tags as a list, a tuple or None, a context already seen): look the
 * context's key up by name then by tags, append it to the increments deque, and
 * compare the deque's length with the fork gate. Anything else, every error
 * included, is handed to the Python method unchanged, so both paths raise the same
 * errors and the Python code stays the one definition of the behaviour.
 *
 * The object is installed as the client's instance attribute `increment`: the lookup
 * `client.increment` then finds it before the class's method, and calling it costs a
 * vectorcall, no bound method.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *contexts;   /* dict: name -> dict: tags tuple or None -> (name, tags) key */
    PyObject *queue;      /* the increments deque */
    PyObject *append;     /* queue.append, bound once */
    PyObject *gate_view;  /* the fork gate's memoryview (an int64 cell) */
    Py_buffer gate;       /* its buffer: gate.buf is read on every call */
    PyObject *pressure;   /* Client._pressure, bound: the rare path */
    PyObject *fallback;   /* Client.increment, bound: everything else */
    PyObject *one;        /* the int 1 */
    vectorcallfunc vectorcall;
} FastIncrement;

static PyObject *str_value, *str_tags, *str_sample_rate, *str_metric;

static PyObject *
call_fallback(FastIncrement *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static PyObject *
fast_increment(FastIncrement *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *metric, *value = self->one, *tags = Py_None, *sample_rate = Py_None;
    if (self->fallback == NULL) {
        /* tp_clear ran: the collector is taking the client apart (a finaliser in
           the same cycle called it). Nothing is left to record into. */
        PyErr_SetString(PyExc_RuntimeError, "this conveyor Client is being garbage-collected");
        return NULL;
    }
    if (nargs < 1 || nargs > 4) {
        return call_fallback(self, args, nargsf, kwnames);
    }
    metric = args[0];
    if (nargs > 1) value = args[1];
    if (nargs > 2) tags = args[2];
    if (nargs > 3) sample_rate = args[3];
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            PyObject *arg = args[nargs + i];
            /* Keyword names from call sites are interned: identity first. */
            if ((name == str_tags || PyUnicode_Compare(name, str_tags) == 0) && nargs <= 2) {
                tags = arg;
            } else if ((name == str_value || PyUnicode_Compare(name, str_value) == 0) && nargs <= 1) {
                value = arg;
            } else if ((name == str_sample_rate || PyUnicode_Compare(name, str_sample_rate) == 0)
                       && nargs <= 3) {
                sample_rate = arg;
            } else {
                /* metric=, an unknown name, or one given twice: Python says how. */
                PyErr_Clear();
                return call_fallback(self, args, nargsf, kwnames);
            }
        }
    }
    if (value != self->one || sample_rate != Py_None) {
        return call_fallback(self, args, nargsf, kwnames);
    }
    /* Strong references from here: hashing or comparing a tag that is not a str can
       run Python code, which could change the tables under us. */
    PyObject *by_tags = PyDict_GetItemWithError(self->contexts, metric);
    if (by_tags == NULL) {
        PyErr_Clear();  /* unhashable, or a new name: the fallback handles both */
        return call_fallback(self, args, nargsf, kwnames);
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
        Py_DECREF(by_tags);
        return call_fallback(self, args, nargsf, kwnames);  /* a dict, or bad tags */
    }
    Py_DECREF(by_tags);
    if (key == NULL) {
        PyErr_Clear();
        return call_fallback(self, args, nargsf, kwnames);
    }
    PyObject *result = PyObject_Vectorcall(self->append, &key, 1, NULL);
    Py_DECREF(key);
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

static PyObject *
FastIncrement_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"contexts", "queue", "gate", "pressure", "fallback", NULL};
    PyObject *contexts, *queue, *gate, *pressure, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOOO:FastIncrement", kwlist,
                                     &PyDict_Type, &contexts, &queue, &gate, &pressure,
                                     &fallback)) {
        return NULL;
    }
    FastIncrement *self = (FastIncrement *)type->tp_alloc(type, 0);
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
    self->vectorcall = (vectorcallfunc)fast_increment;
    return (PyObject *)self;
}

static int
FastIncrement_traverse(FastIncrement *self, visitproc visit, void *arg)
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
FastIncrement_clear(FastIncrement *self)
{
    Py_CLEAR(self->contexts);
    Py_CLEAR(self->queue);
    Py_CLEAR(self->append);
    Py_CLEAR(self->pressure);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
FastIncrement_dealloc(FastIncrement *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    FastIncrement_clear(self);
    if (self->gate.obj != NULL) {
        PyBuffer_Release(&self->gate);
    }
    Py_CLEAR(self->gate_view);
    Py_CLEAR(self->one);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
FastIncrement_call(FastIncrement *self, PyObject *args, PyObject *kwargs)
{
    return PyVectorcall_Call((PyObject *)self, args, kwargs);
}

static PyMemberDef FastIncrement_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(FastIncrement, vectorcall), READONLY},
    {NULL},
};

static PyType_Slot FastIncrement_slots[] = {
    {Py_tp_doc, "Client.increment for value-1 calls on known contexts (see _client.py)."},
    {Py_tp_new, FastIncrement_new},
    {Py_tp_dealloc, FastIncrement_dealloc},
    {Py_tp_traverse, FastIncrement_traverse},
    {Py_tp_clear, FastIncrement_clear},
    {Py_tp_call, FastIncrement_call},
    {Py_tp_members, FastIncrement_members},
    {0, NULL},
};

static PyType_Spec FastIncrement_spec = {
    .name = "conveyor.client._speedups.FastIncrement",
    .basicsize = sizeof(FastIncrement),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = FastIncrement_slots,
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
    PyObject *type = PyType_FromModuleAndSpec(module, &FastIncrement_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "FastIncrement", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    Py_DECREF(type);
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "conveyor.client._speedups",
    .m_doc = "The value-1 increment in C: an optional accelerator (see _client.py).",
    .m_size = 0,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
