"""The modalities (sensors) of the project, in the one order used everywhere: subset order and keys, the ``present``
columns of a data set, the manifest's lists, the sensor rigs of the simulated world and the demo (docs/formats.md,
"Modalities and classes"). Imports nothing, so every layer (core, data, training, sim, ros) can use it."""

#: Modality names in canonical order.
MODALITIES = ("camera", "lidar", "reflectance")
