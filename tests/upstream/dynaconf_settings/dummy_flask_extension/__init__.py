"""A Flask extension loaded by name from settings (dynaconf's test_flask.py EXTENSIONS tests)."""


class DummyExtensionType:
    def init_app(self, app):
        app.extensions["dummy"] = self


dummy_instance = DummyExtensionType()
