"""Every wire format and message body of the engine, defined once; both sides import it from here.

Pure: no I/O, no config, no logging, and nothing of the services (``protocol`` sits beside
``htm/`` at the bottom of the package; services, the CLI and applications import it).

* `timestamps` -- naive-UTC datetimes <-> epoch seconds (the DATETIME columns' and messages' form);
* `errors` -- `UndecodableMessage`, what every decoder raises for a body it cannot use, with a
  reason from a fixed set (dead-letter header and /metrics label);
* `data_queue` -- the custom metric data queue's envelope ``{"protocol": "plain", "data": [...]}``
  (the line grammar inside it is `htmengine.runtime.plaintext_protocol`);
* `model_swapper` -- request and result messages of the model swapper, and scheduler notifications;
* `results` -- the results exchange's body (zlib-compressed JSON) and its public decoder
  `deserializeModelResult`, for applications.
"""
