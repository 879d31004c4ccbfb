"""DICOMweb towards a PACS: the multipart/related codec that STOW-RS and WADO-RS bodies use
(both directions), and an async client that pushes instances (STOW-RS), pulls studies and
series (WADO-RS) and searches instances (QIDO-RS). Its errors say whether a retry can help.
"""
