"""A Flask app configured by FlaskDynaconf from the .env file beside it.

dynaconf's test_flask.py imports such an app from its repository's tests_functional package,
which the sdist does not ship; the harness installs this one under that name.
"""

from dynaconf.contrib import FlaskDynaconf
from flask import Flask

app = Flask(__name__)
FlaskDynaconf(app)  # FLASK_* values from .env and the environment


@app.route("/test")
def greeting():
    return app.config["HELLO"]
