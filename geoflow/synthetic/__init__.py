"""The synthetic Sentinel world: land cover, Sentinel-2 reflectance through the year, Sentinel-1
backscatter, clouds, shadows and snow with their SCL codes, calibrated to real Sentinel data.

One simulator, two users: :mod:`geoflow.archive` writes it as COGs + STAC items (the bundled
sample archive), and :mod:`geoflow.model.data` cuts training and evaluation patches from it.
It imports only the conventions at the bottom of the house (:mod:`geoflow.sentinel`, the class
scheme), never the archive.

- :mod:`geoflow.synthetic.world`: land cover, spectra, backscatter, phenology, snow.
- :mod:`geoflow.synthetic.clouds`: clouds, shadows and the SCL layer.
"""
