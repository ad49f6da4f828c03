"""The ``module:function`` form of a Flask extension named in EXTENSIONS."""


def init_app(app):
    app.is_dummy_loaded = True
