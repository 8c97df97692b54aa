"""Citations of the shared datasets and of the methods the training tasks' cards name (one
copy for every task)."""

BRATS = ["Baid U. et al. The RSNA-ASNR-MICCAI BraTS 2021 Benchmark on Brain Tumor "
         "Segmentation and Radiogenomic Classification. arXiv:2107.02314 (2021)",
         "Menze B.H. et al. The Multimodal Brain Tumor Image Segmentation Benchmark "
         "(BRATS). IEEE TMI 34(10) (2015)",
         "Bakas S. et al. Advancing The Cancer Genome Atlas glioma MRI collections with "
         "expert segmentation labels and radiomic features. Sci Data 4:170117 (2017)"]
#: the shared BraTS case that comes from UCSF-PDGM, and its citation
CASE_PDGM = "BraTS2021_00006"
PDGM = ("Calabrese E. et al. The University of California San Francisco Preoperative "
        "Diffuse Glioma MRI (UCSF-PDGM) dataset. TCIA, CC BY 4.0 (BraTS2021_00006)")
BUDA = ("Buda M., Saha A., Mazurowski M.A. Association of genomic subtypes of lower-grade "
        "gliomas with shape features automatically extracted by a deep learning algorithm. "
        "Comput Biol Med 109 (2019)")
MAZUROWSKI = "Mazurowski M.A. et al. Radiogenomics of lower-grade glioma. J Neurooncol (2017)"
TCIA_LGG = ("Clark K. et al. The Cancer Imaging Archive (TCIA). J Digit Imaging 26 (2013); "
            "TCGA-LGG collection")
SEGRESNET = ("Myronenko A. 3D MRI brain tumor segmentation using autoencoder regularization. "
             "BrainLes 2018 (SegResNet)")
ATTENTION_UNET = "Oktay O. et al. Attention U-Net. MIDL 2018"
MONAI = "MONAI Consortium. MONAI: Medical Open Network for AI (2020)"
