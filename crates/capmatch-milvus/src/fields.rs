//! Columns in and out of Milvus' `FieldData`.

use milvus::proto::schema::{field_data, scalar_field, vector_field, DataType, FieldData, FloatArray, LongArray, ScalarField, StringArray, VectorField};

use crate::error::MilvusError;

pub(crate) fn longs(name: &str, data: Vec<i64>) -> FieldData {
    FieldData {
        r#type: DataType::Int64 as i32,
        field_name: name.into(),
        field: Some(field_data::Field::Scalars(ScalarField { data: Some(scalar_field::Data::LongData(LongArray { data })), ..Default::default() })),
        ..Default::default()
    }
}

pub(crate) fn strings(name: &str, data: Vec<String>) -> FieldData {
    FieldData {
        r#type: DataType::VarChar as i32,
        field_name: name.into(),
        field: Some(field_data::Field::Scalars(ScalarField { data: Some(scalar_field::Data::StringData(StringArray { data })), ..Default::default() })),
        ..Default::default()
    }
}

pub(crate) fn floats(name: &str, dim: usize, data: Vec<f32>) -> FieldData {
    FieldData {
        r#type: DataType::FloatVector as i32,
        field_name: name.into(),
        field: Some(field_data::Field::Vectors(VectorField {
            dim: dim as i64,
            data: Some(vector_field::Data::FloatVector(FloatArray { data })),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn find<'a>(fields: &'a [FieldData], name: &str) -> Result<&'a FieldData, MilvusError> {
    fields
        .iter()
        .find(|f| f.field_name == name)
        .ok_or_else(|| MilvusError::Invalid(format!("the server's answer has no field {name:?}")))
}

pub(crate) fn get_longs(fields: &[FieldData], name: &str) -> Result<Vec<i64>, MilvusError> {
    match &find(fields, name)?.field {
        Some(field_data::Field::Scalars(ScalarField { data: Some(scalar_field::Data::LongData(a)), .. })) => Ok(a.data.clone()),
        // Milvus 2.3 answers an empty result with untyped fields.
        None | Some(field_data::Field::Scalars(ScalarField { data: None, .. })) => Ok(Vec::new()),
        _ => Err(MilvusError::Invalid(format!("field {name:?} is not INT64 in the server's answer"))),
    }
}

pub(crate) fn get_strings(fields: &[FieldData], name: &str) -> Result<Vec<String>, MilvusError> {
    match &find(fields, name)?.field {
        Some(field_data::Field::Scalars(ScalarField { data: Some(scalar_field::Data::StringData(a)), .. })) => Ok(a.data.clone()),
        None | Some(field_data::Field::Scalars(ScalarField { data: None, .. })) => Ok(Vec::new()),
        _ => Err(MilvusError::Invalid(format!("field {name:?} is not VARCHAR in the server's answer"))),
    }
}

/// The vectors of a float-vector field, row-major, and their dimension.
pub(crate) fn get_floats(fields: &[FieldData], name: &str) -> Result<(usize, Vec<f32>), MilvusError> {
    match &find(fields, name)?.field {
        Some(field_data::Field::Vectors(VectorField { dim, data: Some(vector_field::Data::FloatVector(a)), .. })) => {
            Ok((*dim as usize, a.data.clone()))
        }
        None | Some(field_data::Field::Vectors(VectorField { data: None, .. })) => Ok((1, Vec::new())),
        _ => Err(MilvusError::Invalid(format!("field {name:?} is not a float vector in the server's answer"))),
    }
}

/// A `field in [...]` filter.
pub(crate) fn in_list(field: &str, values: &[i64]) -> String {
    let list: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    format!("{field} in [{}]", list.join(","))
}

/// A string literal of a filter expression.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Milvus refuses NaN and infinity in vectors, but the contract stores vectors as given: a
/// vector with a non-finite value is searched as zeros (it can never be proposed above a
/// real match) and kept exactly in the row's `raw` field (base64 of its little-endian
/// bytes; empty for every finite vector).
pub(crate) fn searchable(v: &[f32]) -> (Vec<f32>, String) {
    use base64::Engine as _;
    if v.iter().all(|x| x.is_finite()) {
        (v.to_vec(), String::new())
    } else {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        (vec![0.0; v.len()], base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

/// The stored vector: `raw` when set, else the vector field's.
pub(crate) fn exact(vector: &[f32], raw: &str) -> Vec<f32> {
    use base64::Engine as _;
    if raw.is_empty() {
        return vector.to_vec();
    }
    match base64::engine::general_purpose::STANDARD.decode(raw) {
        Ok(bytes) if bytes.len() == vector.len() * 4 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
        _ => vector.to_vec(),
    }
}
