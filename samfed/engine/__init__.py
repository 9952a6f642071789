"""The run engine shared by the in-process runner (`samfed.train.runner`) and the Flower ServerApp
(`samfed.federation.server_app`): data, teacher, models, seeds, the round loop, resume state and
outputs, each in its own module; `engine.Engine` ties them together over a `ClientStep`."""
